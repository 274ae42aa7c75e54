"""The Paddle training steps of EfficientAD-S and RD4AD against independent torch eager versions
written from the papers (benchmark/torch_reference.py), from the same weights: the losses of the
first two steps (before and after one Adam update) agree to float32 rounding. Runs where torch
is installed (CI's Paddle 3 environment installs its CPU build); bench_train.py --compare_torch
times the same steps. Each check runs in a process of its own, torch loaded first as in
bench_train.py, so no other test shares a process with torch's libraries."""
import argparse
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def two_steps(model, cpu_conv):
    """[(paddle loss, torch loss)] of the first two training steps, at 64 px."""
    sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmark")]
    import compare_torch

    torch = compare_torch.import_torch_first(2)
    from adkit.core.runtime import tune_process

    tune_process(2)
    torch.manual_seed(0)
    args = argparse.Namespace(image_size=64, steps=1, cpu_conv=cpu_conv, rd4ad_backbone="resnet18")
    builder = {"efficientad_s": compare_torch._efficientad, "rd4ad": compare_torch._rd4ad}[model]
    paddle_step, torch_step, batches, dropout = builder(args, compare_torch._data(ROOT, 64), torch)
    if dropout:
        dropout(False)  # the autoencoder's dropout draws differ between the frameworks
    return [(paddle_step(batches[k], k), torch_step(batches[k], k)) for k in range(2)]


@pytest.mark.parametrize("cpu_conv", ["onednn", "paddle"])
@pytest.mark.parametrize("model", ["efficientad_s", "rd4ad"])
def test_training_step_matches_torch(model, cpu_conv):
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, __file__, model, cpu_conv], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for paddle_loss, torch_loss in json.loads(done.stdout.splitlines()[-1]):
        assert paddle_loss == pytest.approx(torch_loss, rel=1e-4)


if __name__ == "__main__":
    print(json.dumps(two_steps(*sys.argv[1:3])))
