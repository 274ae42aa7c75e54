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


def file_states(folder):
    """{path relative to ``folder``: (size, modification time)} of every file under it."""
    states = {}
    for where, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(where, name)
            info = os.lstat(path)
            states[os.path.relpath(path, folder)] = (info.st_size, info.st_mtime_ns)
    return states


def not_ignored(paths):
    """The paths (relative to the repository) that its .gitignore does not ignore."""
    paths = list(paths)
    if not paths:
        return []
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin", "-n", "-v"], input="\n".join(paths),
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed: {done.stderr.strip()}")
    out = []
    for line in done.stdout.splitlines():
        source, _, path = line.partition("\t")
        if source == "::" or source.split(":", 2)[-1].startswith("!"):  # no rule, or a rule re-including it
            out.append(path)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_every_page_has_commands_that_run(page, tmp_path):
    """... and they write nothing a `git status` of the repository would list: outputs go to
    ignored folders (output/, inference/, ...)."""
    blocks = marked_blocks(page)
    assert blocks, f"{page}: no {MARKER} block (mark at least one command block that runs on sample_data)"
    work = copy_of_repository(tmp_path / "repo")
    before = file_states(work)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for language, code in blocks:
        assert language in ("bash", "python"), f"{page}: cannot run a {language} block"
        command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (f"{page}: this block failed with exit code {proc.returncode}:\n{code}\n"
                                      f"--- stdout ---\n{proc.stdout[-2000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
    after = file_states(work)
    written = [path for path, state in after.items() if before.get(path) != state]
    assert not not_ignored(written), f"{page}: its commands wrote files a checkout would track: {not_ignored(written)}"


OUTPUT_OPTIONS = re.compile(r"--(output_dir|save_dir|audit_log|log_dir|work_dir)[ =]([a-z0-9_.][^\s\"'`)\\;,]*)")


def example_outputs():
    """(file, line number, option, value) of every output path the repository's docs and
    scripts show in an example command (placeholders such as OUT/ or <run> left out)."""
    found = []
    for path in tracked_text_files():
        if not path.endswith((".md", ".py", ".sh", ".txt")) or path.startswith("tests/"):
            continue
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            lines = f.read().splitlines()
        for number, line in enumerate(lines, 1):
            continued = number > 1 and lines[number - 2].rstrip().endswith("\\")
            if "python " in line or continued:  # a command, or a continuation line of one
                found += [(path, number, option, value) for option, value in OUTPUT_OPTIONS.findall(line)
                          if not re.search(r"[<>${}]", value)]
    return found


def test_example_commands_write_only_into_ignored_folders():
    """A user who copies an example from the docs finds its outputs under output/ (or another
    ignored folder), not as untracked files in the checkout (decisions.csv at the top was)."""
    examples = example_outputs()
    assert len(examples) > 20  # the docs' --output_dir / --save_dir / --audit_log examples were found
    inside = {f"{value.rstrip('/')}/x": (path, number, option, value) for path, number, option, value in examples}
    bad = [inside[p] for p in not_ignored(inside)]
    assert not bad, "\n".join(f"{path}:{number}: --{option} {value}" for path, number, option, value in bad)


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


REFERENCED_TYPES = (".py", ".md", ".yaml", ".yml", ".txt", ".sh", ".toml", ".cfg", ".html")
PATH = r"`?((?:[\w.-]+/)*[\w.-]+\.(?:md|py|txt|yaml|yml|sh|toml|json))`?"
SECTION = r'(?:,? *"([^"\n]+)")?'
REFERENCES = [  # (pattern, kind): kind "readme" (group 1: a section) or "path" (1: path, 2: section)
    (re.compile(r"\b[Ss]ee (?:the (?:project )?)?README\b(?!\.md|/)" + SECTION), "readme"),
    (re.compile(r'\bREADME\'s *"([^"\n]+)"'), "readme"),
    (re.compile(r"\b[Ss]ee " + PATH + SECTION), "path"),
    (re.compile(PATH + r', "([^"\n]+)"'), "path"),
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_text_files():
    """The repository's files a reference may sit in: code, docs, configs, requirements."""
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        pytest.skip("not a git checkout: no list of the repository's files")
    return [p for p in done.stdout.splitlines() if p.endswith(REFERENCED_TYPES) and not p.startswith("sample_data/")]


def headings(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return [line.lstrip("#").strip() for line in f if re.match(r"#{1,6} ", line)]


def has_section(page, section):
    """A heading of ``page`` is ``section``, or starts with it and a bracket ("Quick start (...)")."""
    return any(h == section or h.startswith(section + " (") for h in headings(page))


def slug(heading):
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def broken_references(relative):
    """[(line number, text, why)] of the references in one file that do not resolve."""
    with open(os.path.join(ROOT, relative), encoding="utf-8") as f:
        lines = f.read().splitlines()
    folder = os.path.dirname(relative)
    broken = []
    for number, line in enumerate(lines, 1):
        for pattern, kind in REFERENCES:
            for found in pattern.finditer(line):
                if kind == "readme":
                    page, section = "README.md", found.group(1)
                    if not section:
                        broken.append((number, found.group(0), "name the page or the README section"))
                        continue
                else:
                    page, section = found.group(1), found.group(2)
                    candidates = [os.path.normpath(os.path.join(base, page)) for base in (folder, "")]
                    page = next((c for c in candidates if os.path.isfile(os.path.join(ROOT, c))), None)
                    if page is None:
                        broken.append((number, found.group(0), "no such file"))
                        continue
                if section and page.endswith(".md") and not has_section(page, section):
                    broken.append((number, found.group(0), f"{page} has no heading {section!r}"))
        if relative.endswith(".md"):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue  # a web address
                path, _, anchor = target.partition("#")
                page = os.path.normpath(os.path.join(folder, path)) if path else relative
                if not os.path.exists(os.path.join(ROOT, page)):
                    broken.append((number, target, "no such file"))
                elif anchor and page.endswith(".md") and anchor not in {slug(h) for h in headings(page)}:
                    broken.append((number, target, f"{page} has no heading for #{anchor}"))
    return broken


def test_every_see_reference_resolves():
    """Every pointer of the repository's code, configs and docs to another file or section
    (the word see before README and a quoted section, a path with or without a quoted
    section, a markdown link) names a file and heading that exist: README sections that moved
    to doc/ left such pointers dead."""
    broken = [f"{path}:{number}: {text} ({why})" for path in tracked_text_files()
              for number, text, why in broken_references(path)]
    assert not broken, "\n".join(broken)
