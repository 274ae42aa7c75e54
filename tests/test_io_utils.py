"""Atomic writes (adkit.io_utils.atomic_path, used for outputs and checkpoints alike)."""
import os
import stat

import numpy as np
import pytest

from adkit.io_utils import atomic_path, read_json, write_json
from adkit.weights import safe_load, save_atomic


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
