"""The machine a benchmark ran on, for its header line (numbers differ between CPUs)."""
import platform


def _cpuinfo():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return cpuinfo.read()
    except OSError:
        return ""


def cpu_model():
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_has(*flags):
    """Whether the CPU lists any of ``flags`` (e.g. avx512_vnni) in /proc/cpuinfo."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return bool(set(flags) & set(line.split(":", 1)[1].split()))
    return False
