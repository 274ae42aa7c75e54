"""main.py --mode train: fit a method on a category's good images, then calibrate the
threshold on the training side; several processes share the categories or the batches."""
import contextlib
import logging
import os
import shlex

from adkit.core import distributed
from adkit.core.distributed import launched_world_size
from adkit.core.io_utils import new_folder
from adkit.core.progress import log
from adkit.deploy.engines import scoring_engine
from adkit.evaluate.calibration import (calibrate, check_policy_applies, few_validation_warning,
                                        write_calibration)
from adkit.evaluate.thresholds import DEFAULT_POLICY
from adkit.options.registry import build_method, save_training_config, spec_for
from adkit.core.tiling import Tiling
from adkit.pipelines.categories import checkpoint_dir, fitting_sets, one_process_for_tiles, training_side
from adkit.train.trainer import CHECKPOINT_FILE, TrainingInterrupted


def train(cfg, cls):
    one_process_for_tiles(cfg)
    train_set, val_set = training_side(cfg, cls)
    policy = cfg["threshold_policy"] or DEFAULT_POLICY
    check_policy_applies(policy, len(val_set))
    train_set.preload()
    val_set.preload()
    fit_train, fit_val = fitting_sets(cfg, cls, train_set, val_set)
    ckpt_dir = checkpoint_dir(cfg, cls)
    if cfg["log_dir"]:  # one curve per category
        cfg = dict(cfg, log_dir=os.path.join(cfg["log_dir"], cfg["model"], cls))
    main_process = distributed.is_main()  # several processes: only it writes files
    # a run that fails before its first checkpoint leaves no folder behind
    with (new_folder(ckpt_dir, keep=lambda: os.path.isfile(os.path.join(ckpt_dir, CHECKPOINT_FILE)))
          if main_process else contextlib.nullcontext()):
        log.info("[%s] training %s on %d images (%d held out for validation) -> %s",
                 cls, cfg["model"], len(train_set), len(val_set), ckpt_dir)
        method = build_method(cfg)
        if main_process:
            save_training_config(cfg, ckpt_dir)  # first: eval/export can use interim checkpoints
        method.fit(fit_train, fit_val, ckpt_dir, resume=cfg["resume"])
    calibration = calibrate(scoring_engine(method, cfg).run, train_set, val_set,
                            cfg["eval_batch_size"], cfg["seed"], policy, Tiling.from_config(cfg))
    if not main_process:  # it scored its share of the images; the main process writes
        distributed.barrier()
        return
    write_calibration(ckpt_dir, calibration)
    distributed.barrier()
    value = calibration["threshold"]["value"]
    log.info("[%s] training done; threshold %s (%s)", cls,
             "-" if value is None else f"{value:.6g}", calibration["policy"])
    warning = few_validation_warning(calibration, calibration["policy"])
    if warning:
        log.warning("[%s] %s", cls, warning)


def train_categories(cfg, categories, argv):
    """Several processes: a data-parallel method trains each category with all of them; any
    other gives each process every world_size-th category, trained alone (EfficientAD's batch
    is 1; PatchCore and PaDiM fit in one pass). One process: each category in turn."""
    world = distributed.world_size()
    if world == 1 or spec_for(cfg["model"]).data_parallel:
        distributed.check_batch_size(cfg["batch_size"])  # split evenly over the processes
        for cls in categories:
            with resume_advice(argv):
                train(cfg, cls)
        return
    mine = categories[distributed.rank()::world]
    logging.getLogger("adkit").setLevel(logging.INFO)  # each process reports its own categories
    log.info("process %d of %d: %s trains each category in one process; this one: %s",
             distributed.rank(), world, cfg["model"], ", ".join(mine) or "none")
    for cls in mine:
        with resume_advice(argv), distributed.local():
            train(cfg, cls)


@contextlib.contextmanager
def resume_advice(argv):
    """An interrupted training run names the exact command that continues it."""
    try:
        yield
    except TrainingInterrupted as stop:
        world = launched_world_size()  # started by paddle.distributed.launch: the same again
        launcher = (["python", "-m", "paddle.distributed.launch", "--nproc_per_node", str(world)]
                    if world > 1 else ["python"])
        command = shlex.join(launcher + ["main.py", *argv]
                             + ([] if "--resume" in argv else ["--resume"]))
        raise TrainingInterrupted(f"{stop}; continue with: {command}", stop.step) from None
