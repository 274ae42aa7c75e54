"""main.py --mode infer: a category's checkpoint on an image, a folder or a tree, through the
Predictor (the same outputs as infer.py on an export)."""
import os

from adkit.core.errors import UserError
from adkit.core.image_io import collect_images
from adkit.deploy.predictor import predict_into_folder, Predictor, refuse_bad_files
from adkit.outputs.folders import RunFolder
from adkit.pipelines.categories import checkpoint_dir


def infer(cfg, cls):
    root, paths = collect_images(cfg["img_path"])
    refuse_bad_files(paths, cfg["skip_bad_images"])
    ckpt_dir = checkpoint_dir(cfg, cls)
    run_folder = RunFolder(os.path.join(ckpt_dir, "infer"))
    predictor = Predictor(ckpt_dir, device=cfg["device"], cpu_threads=cfg["cpu_threads"],
                          threshold=cfg["threshold"], threshold_policy=cfg["threshold_policy"])
    if predictor.model != cfg["model"]:
        raise UserError(f"{ckpt_dir}: checkpoint is for --model {predictor.model}, not {cfg['model']}")
    predict_into_folder(predictor, cfg["img_path"], root, paths, run_folder, cfg["save_format"],
                        cfg["eval_batch_size"], cfg["skip_bad_images"])
