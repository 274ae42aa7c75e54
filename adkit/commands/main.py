#!/usr/bin/env python
"""Train, evaluate and run anomaly detectors on MVTec-layout data.

    python main.py --model rd4ad --mode train --data_dir sample_data --cls brick
    python main.py --model rd4ad --mode eval  --data_dir sample_data --cls brick
    python main.py --model rd4ad --mode infer --cls brick --img_path some/image.png
    python main.py --model efficientad_s --mode distill --data_dir IMAGES --output_dir output/teacher
    python main.py --mode update --model_dir output/patchcore/brick --reviews reviews.db --output_dir NEW

Several devices: python -m paddle.distributed.launch --devices 0,1 main.py ... (doc/gpus.md).
This file parses, validates and dispatches; the pipelines live in adkit/pipelines/.
"""
import logging
import sys

from adkit.core.errors import UserError, exit_on_user_error
from adkit.core.runtime import cpu_threads_from_argv, setup_logging, tune_process


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # before the first Paddle import: threads, and whether Paddle's C++ messages show
    tune_process(cpu_threads_from_argv(argv), verbose="--verbose" in argv)
    if _asks_for_update(argv):  # a mode of any checkpoint: its own options (adkit/commands/update.py)
        from adkit.commands.update import run

        setup_logging()
        return run(argv)
    from adkit.options.config import resolve_config

    cfg = resolve_config(argv)
    setup_logging()
    from adkit.core.runtime import seed_everything, set_device

    set_device(cfg["device"])
    from adkit.core import distributed
    from adkit.train.trainer import set_mixed_precision

    if distributed.init() > 1 and not distributed.is_main():
        logging.getLogger("adkit").setLevel(logging.WARNING)  # the main process logs
    set_mixed_precision(cfg["amp"])
    seed_everything(cfg["seed"])
    from adkit.options.registry import spec_for
    from adkit.pipelines.categories import categories_for
    from adkit.pipelines.evaluate import evaluate, report
    from adkit.pipelines.infer import infer
    from adkit.pipelines.train import resume_advice, train_categories

    spec = spec_for(cfg["model"])
    if cfg["mode"] in spec.modes:  # a mode the method adds (EfficientAD: distill)
        with resume_advice(argv):
            spec.mode_runner(cfg["mode"])(cfg)
        return
    if cfg["mode"] == "infer":
        if cfg["cls"] == "all":
            raise UserError("--mode infer needs --cls NAME: the category whose model to use")
        infer(cfg, cfg["cls"])  # several processes: each scores its share (predict_into_folder)
        return
    categories = categories_for(cfg)
    if cfg["mode"] == "train":
        train_categories(cfg, categories, argv)
    else:
        results = {cls: evaluate(cfg, cls) for cls in categories}
        if distributed.is_main():
            report(cfg, results)


def _asks_for_update(argv):
    return any(a == "--mode=update" or (a == "--mode" and argv[k + 1:k + 2] == ["update"])
               for k, a in enumerate(argv))


if __name__ == "__main__":
    main()
