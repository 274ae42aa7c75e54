"""The commands of README.md and the doc/ pages keep working: every block marked with a
`<!-- doc-test -->` line runs, as written, in a fresh copy of the repository (so its outputs
land nowhere near the checkout), and every page has at least one such block. bash blocks run
under `bash -euo pipefail`, python blocks with this interpreter; `python` on the PATH is this
interpreter too."""
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- doc-test -->"
PAGES = ["README.md"] + sorted(os.path.join("doc", name) for name in os.listdir(os.path.join(ROOT, "doc"))
                               if name.endswith(".md"))
NOT_COPIED = (".git", ".venv*", "output*", "inference*", "test_tipc/output")  # at the top: runs' outputs


def marked_blocks(page):
    """[(language, code)] of the fenced blocks right after a MARKER line."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(re.escape(MARKER) + r"\n```(\w+)\n(.*?)\n```", text, flags=re.S)
    assert text.count(MARKER) == len(blocks), f"{page}: a {MARKER} line not followed by a fenced block"
    return blocks


def copy_of_repository(folder):
    """The checkout without its history, virtual environments and the outputs of earlier runs."""
    def ignore(where, names):
        relative = os.path.relpath(where, ROOT)
        skipped = {n for n in names if n in ("__pycache__", ".pytest_cache")}
        for pattern in NOT_COPIED:
            base, _, leaf = pattern.rpartition("/")
            if (base or ".") == relative:
                skipped |= set(fnmatch.filter(names, leaf))
        return skipped

    shutil.copytree(ROOT, folder, ignore=ignore)
    return folder


@pytest.mark.parametrize("page", PAGES)
def test_every_page_has_commands_that_run(page, tmp_path):
    blocks = marked_blocks(page)
    assert blocks, f"{page}: no {MARKER} block (mark at least one command block that runs on sample_data)"
    work = copy_of_repository(tmp_path / "repo")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for language, code in blocks:
        assert language in ("bash", "python"), f"{page}: cannot run a {language} block"
        command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (f"{page}: this block failed with exit code {proc.returncode}:\n{code}\n"
                                      f"--- stdout ---\n{proc.stdout[-2000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")


def quick_start_commands():
    """The README quick start's main.py commands, as argument lists after `python main.py`."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Quick start"):]
    block = re.search(r"```bash\n(.*?)\n```", section, flags=re.S).group(1)
    commands = [part.strip() for part in block.replace("\\\n", " ").split("&&")]
    return [shlex.split(c)[2:] for c in commands if c.startswith("python main.py")]


@pytest.mark.slow
def test_the_readme_quick_start_labels_the_good_test_images_good(tmp_path):
    """A newcomer's first result: at the threshold training stored (from the training side
    alone), infer passes every good test brick and flags every defective one, with no warning
    that the threshold is a guess."""
    commands = quick_start_commands()
    assert [c[c.index("--mode") + 1] for c in commands] == ["train", "eval", "infer"]
    out = str(tmp_path / "output")
    runs = []
    for args in commands:
        args = [out if before == "--output_dir" else a for before, a in zip([None] + args, args)]
        runs.append(subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                                   text=True, timeout=900))
        assert runs[-1].returncode == 0, runs[-1].stderr[-3000:]
    assert not any("WARNING" in run.stderr for run in runs), [run.stderr for run in runs]
    lines = [line.split("\t") for line in runs[-1].stdout.splitlines()]
    test_tree = os.path.join(ROOT, "sample_data", "brick", "test")
    expected = sum(len(files) for _, _, files in os.walk(test_tree))
    assert len(lines) == expected
    for score, label, path in lines:
        assert label == ("good" if os.path.basename(os.path.dirname(path)) == "good" else "defect"), (score, path)
