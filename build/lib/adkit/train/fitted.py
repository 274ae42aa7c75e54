"""Checkpoints of methods fitted in one pass over the training images, without an optimiser
(PatchCore's memory bank, PaDiM's Gaussians).

Their statistics go to ``fitted.npz`` (plain numpy arrays: loading runs no code and copies each
array once, which matters for PaDiM's gigabytes) and ``checkpoint.pdparams`` in the shared
format (adkit.train.trainer) names the method and holds the settings needed to rebuild it. The npz
is written first, so a checkpoint file always has its arrays beside it.
"""
from pathlib import Path

import numpy as np

from adkit.core.errors import UserError
from adkit.core.io_utils import atomic_path
from adkit.train.trainer import CHECKPOINT_FILE, FORMAT, read_checkpoint
from adkit.train.training import save_train_state

ARRAYS_FILE = "fitted.npz"


def save_fitted(ckpt_dir, method, arrays, extra):
    """Write ``arrays`` {name: ndarray} and ``extra`` (small settings) into ``ckpt_dir``."""
    ckpt_dir = Path(ckpt_dir)
    with atomic_path(ckpt_dir / ARRAYS_FILE, sync=True) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a name
            np.savez(f, **arrays)
    save_train_state(ckpt_dir / CHECKPOINT_FILE, {
        "format": FORMAT, "method": method, "step": 0, "total": 0, "nets": {},
        "arrays": sorted(arrays), "extra": extra})


def load_fitted(ckpt_dir, method):
    """(arrays, extra) written by ``save_fitted``; one line naming the file when absent/wrong."""
    ckpt_dir = Path(ckpt_dir)
    state = read_checkpoint(ckpt_dir / CHECKPOINT_FILE, "load", f"no fitted {method} model "
                            "there: run --mode train first")
    if state.get("method") != method:
        raise UserError(f"{ckpt_dir / CHECKPOINT_FILE}: a {state.get('method')} checkpoint, "
                        f"not {method}")
    path = ckpt_dir / ARRAYS_FILE
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in state["arrays"]}
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{path}: missing or unreadable ({err}); train again") from None
    return arrays, state["extra"]
