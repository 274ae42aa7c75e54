"""Atomic file and folder writes: a crash or Ctrl-C never leaves a half-written output behind."""
import contextlib
import csv
import json
import os
import shutil
import tempfile

from adkit.core.errors import UserError

# the folder holding the adkit package (a checkout, or site-packages): `python -m adkit...` runs from it
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shipped_folder(name):
    """A folder shipped with adkit (configs, weights): inside the installed package, or at the
    top of a checkout (adkit's search path holds both places, see adkit/__init__.py)."""
    import adkit

    for base in adkit.__path__:
        if os.path.isdir(os.path.join(base, name)):
            return os.path.join(base, name)
    raise UserError(f"adkit's {name}/ folder is missing: reinstall the package (pip install .)")


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode():
    """What open() would give a new file (mkstemp's temp files are 0600, owner-only)."""
    return 0o666 & ~_umask()


def default_dir_mode():
    """What os.mkdir would give a new folder (mkdtemp's are 0700, owner-only)."""
    return 0o777 & ~_umask()


def make_folders(path):
    """``os.makedirs(path)``; returns the folders it created, deepest first."""
    missing, folder = [], os.path.abspath(path)
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for created in reversed(missing):
        os.mkdir(created)
    return missing


def remove_folders(created):
    """Undo ``make_folders``: the deepest with what is in it, then its empty parents."""
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
    for folder in created[1:]:
        try:
            os.rmdir(folder)
        except OSError:
            break


@contextlib.contextmanager
def new_folder(path, keep=lambda: False):
    """Create ``path`` (and parents) for a run; if the run fails, remove what this made unless
    ``keep()`` says something in it is worth keeping (a checkpoint to resume from)."""
    created = make_folders(path)
    try:
        yield
    except BaseException as failure:
        if keep():
            raise
        remove_folders(created)
        if created and type(failure) is KeyboardInterrupt:  # a second Ctrl-C: say what it undid
            raise KeyboardInterrupt(f"stopped at once: {path} removed (nothing in it was worth "
                                    "keeping yet)") from None
        raise


@contextlib.contextmanager
def staged_folder(path, option="--output_dir"):
    """Yield a hidden sibling folder of ``path`` to fill; it becomes ``path`` when the block ends
    without error. On any failure (Ctrl-C too) it is removed, with the parent folders this made.
    ``path`` must not exist (UserError naming ``option``).

    The sibling gets the mode os.mkdir would give (not mkdtemp's owner-only 0700). ``path`` is
    checked again before the rename (os.replace would swap in over an empty folder made
    meanwhile). An OSError while making, filling or renaming the folder becomes a UserError
    "``option`` ``path``: cannot write (...)"."""
    target = os.path.abspath(path)
    if os.path.lexists(target):
        raise UserError(f"{option} {path}: already exists; choose a new folder (it is never "
                        "overwritten nor merged into)")
    parent = os.path.dirname(target)
    created, staging = [], None
    try:
        try:
            created = make_folders(parent)
            staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.tmp-")
            os.chmod(staging, default_dir_mode())
            yield staging
            if os.path.lexists(target):
                raise UserError(f"{option} {path}: appeared while writing; nothing written, "
                                "choose a new folder")
            os.replace(staging, target)
        except OSError as err:
            raise UserError(f"{option} {path}: cannot write ({err})") from None
    except BaseException:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
        remove_folders(created)
        raise


@contextlib.contextmanager
def atomic_path(path, sync=False):
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` only when the
    block ends without error, so a crash or Ctrl-C leaves the old file intact, never half a
    file. ``sync``: force the data to disk before the rename (checkpoints)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write(path, write_fn, mode="w"):
    text_options = {"newline": "", "encoding": "utf-8"} if "b" not in mode else {}
    with atomic_path(path) as tmp, open(tmp, mode, **text_options) as f:
        write_fn(f)


def write_json(path, data):
    _atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=False))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path, header, rows):
    def write(f):
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    _atomic_write(path, write)


def write_bytes(path, data):
    _atomic_write(path, lambda f: f.write(data), mode="wb")
