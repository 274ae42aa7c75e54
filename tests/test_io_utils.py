"""Atomic writes (adkit.core.io_utils.atomic_path, used for outputs and checkpoints alike) and staged
folders (adkit.core.io_utils.staged_folder, the datasets the tools write)."""
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from adkit.core.errors import UserError
from adkit.core.io_utils import atomic_path, default_dir_mode, read_json, staged_folder, write_json
from adkit.train.weights import safe_load, save_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"auroc": 0.9})
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write('{"auroc": ')  # half written when the user presses Ctrl-C
        raise KeyboardInterrupt
    assert read_json(target) == {"auroc": 0.9}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_written_files_get_the_mode_open_would_give(tmp_path):
    (tmp_path / "plain.txt").write_text("x")  # what the user's umask gives an ordinary file
    expected = stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    write_json(tmp_path / "a.json", {})
    save_atomic({"w": np.zeros(2, np.float32)}, tmp_path / "b.pdparams")
    for name in ("a.json", "b.pdparams"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected  # not mkstemp's 0600
    np.testing.assert_array_equal(safe_load(tmp_path / "b.pdparams")["w"], np.zeros(2))


def test_staged_folder_becomes_the_target_with_the_default_folder_mode(tmp_path):
    target = tmp_path / "new" / "cat"
    with staged_folder(str(target)) as staging:
        assert os.path.dirname(staging) == str(tmp_path / "new")
        assert os.path.basename(staging).startswith(".cat.tmp-") and not target.exists()
        (Path(staging) / "train").mkdir()
        (Path(staging) / "train" / "a.png").write_bytes(b"x")
    assert sorted(os.listdir(tmp_path / "new")) == ["cat"]  # renamed, no .tmp- sibling left
    assert (target / "train" / "a.png").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(target).st_mode) == default_dir_mode()  # not mkdtemp's 0700


@pytest.mark.parametrize("failure", [KeyboardInterrupt, ValueError])
def test_failed_staged_folder_is_removed_with_the_parents_it_made(tmp_path, failure):
    (tmp_path / "mine").mkdir()
    with pytest.raises(failure), staged_folder(str(tmp_path / "mine" / "new" / "parents" / "cat")) as staging:
        Path(staging, "half.png").write_bytes(b"x")
        raise failure
    assert os.listdir(tmp_path) == ["mine"] and os.listdir(tmp_path / "mine") == []  # parent kept


def test_staged_folder_refuses_an_existing_target_and_leaves_it_untouched(tmp_path):
    target = tmp_path / "cat"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--data_dir .*cat: already exists"):
        with staged_folder(str(target), option="--data_dir"):
            raise AssertionError("the block must not run")
    assert os.listdir(tmp_path) == ["cat"] and os.listdir(target) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"


def test_staged_folder_refuses_a_target_that_appeared_meanwhile(tmp_path):
    target = tmp_path / "cat"
    with pytest.raises(UserError, match="--output_dir .*cat: appeared while writing"):
        with staged_folder(str(target)) as staging:
            Path(staging, "a.png").write_bytes(b"x")
            target.mkdir()  # somebody else's, empty: os.replace would silently take its place
    assert os.listdir(tmp_path) == ["cat"] and os.listdir(target) == []


def test_an_abrupt_stop_says_the_run_folder_was_removed(tmp_path):
    """A second Ctrl-C during training (before any checkpoint): the folder goes, and the
    message says so instead of a bare 'interrupted'."""
    from adkit.core.io_utils import new_folder

    target = tmp_path / "output" / "rd4ad" / "brick"
    with pytest.raises(KeyboardInterrupt) as stop:
        with new_folder(str(target)):
            raise KeyboardInterrupt
    assert str(stop.value) == f"stopped at once: {target} removed (nothing in it was worth keeping yet)"
    assert not (tmp_path / "output").exists()
    with pytest.raises(KeyboardInterrupt) as stop:  # with a checkpoint: kept, the stop as it was
        with new_folder(str(target), keep=lambda: True):
            raise KeyboardInterrupt
    assert str(stop.value) == "" and target.is_dir()
