"""Trainings for tests/test_distributed.py, run under ``python -m paddle.distributed.launch
--nproc_per_node 2`` or as one plain process:

    python tests/distributed_worker.py FOLDER TOTAL_STEPS [--resume] [--slow SECONDS]
    python tests/distributed_worker.py distill IMAGE_FOLDER OUTPUT_FOLDER

The first: a small MLP in two parts (no BatchNorm, so one process and two give the same updates) fits a
fixed regression with Adam on the shared trainer, batch 8 from ``batch_stream``; with
``--slow`` each step sleeps and the main process writes FOLDER/running after step 3 (the test
then sends Ctrl-C). The second: two steps of EfficientAD teacher distillation, global batch 4
(the PDN has no BatchNorm either).
"""
import os
import sys
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adkit.core.runtime import tune_process  # noqa: E402

tune_process(1)

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from adkit.core import distributed  # noqa: E402
from adkit.train.trainer import CHECKPOINT_FILE, Trainer, TrainingInterrupted  # noqa: E402
from adkit.train.training import batch_stream, make_adam  # noqa: E402

DATA = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)  # 4 inputs, 1 target


def distill(image_folder, output_folder):
    from adkit.models.efficientad.distill import run_distill

    distributed.init()
    run_distill({"model": "efficientad_s", "data_dir": image_folder, "output_dir": output_folder,
                 "backbone": "efficientnet_lite0", "backbone_weights": "none", "steps": 2,
                 "batch_size": 4, "lr": 1e-3, "seed": 7, "save_interval": 1, "log_interval": 1,
                 "resume": False, "image_size": 64, "crop_size": 32, "norm_samples": 4})


def main(argv):
    if argv[0] == "distill":
        return distill(*argv[1:3])
    folder, total = Path(argv[0]), int(argv[1])
    resume = "--resume" in argv
    slow = float(argv[argv.index("--slow") + 1]) if "--slow" in argv else 0.0
    distributed.init()
    paddle.seed(0)
    # two nets wrapped apart, one feeding the other, as RD4AD's bottleneck and decoder
    first = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.Tanh())
    second = paddle.nn.Linear(8, 1)
    optimizer = make_adam(first.parameters() + second.parameters(), 0.01)
    trainer = Trainer("toy", folder / CHECKPOINT_FILE, {"first": first, "second": second},
                      ("first", "second"), optimizer, total=total, seed=5, log_interval=1,
                      save_interval=1000)
    if resume:
        trainer.resume()
    parallel_first, parallel_second = trainer.data_parallel(first), trainer.data_parallel(second)

    def train_step(batch, _step_seed):
        x, y = paddle.to_tensor(batch[:, :4]), paddle.to_tensor(batch[:, 4:])
        loss = paddle.mean((parallel_second(parallel_first(x)) - y) ** 2)
        trainer.optimise(loss)
        if slow:
            time.sleep(slow)
            if trainer.step + 1 >= 3 and distributed.is_main():
                (folder / "running").touch()
        return {"total": float(loss), "rows": float(len(batch))}

    folder.mkdir(parents=True, exist_ok=True)
    try:
        trainer.run(lambda start: batch_stream(DATA, 8, 5, start), train_step)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main(sys.argv[1:])
