"""The commands of README.md and the doc/ pages keep working: every block marked with a
`<!-- doc-test -->` line runs, as written, in a fresh copy of the repository (so its outputs
land nowhere near the checkout), and every page has at least one such block. bash blocks run
under `bash -euo pipefail`, python blocks with this interpreter; `python` on the PATH is this
interpreter too."""
import fnmatch
import os
import re
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


@pytest.mark.slow
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
