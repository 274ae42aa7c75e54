"""The options infer.py and serve.py share: which engine runs the model, how, and at which
threshold; and the Predictor arguments they make."""
import argparse

from adkit.evaluate.thresholds import POLICY_HELP


def str2bool(value):
    lowered = str(value).strip().lower()
    if lowered in ("true", "t", "yes", "y", "1", "on"):
        return True
    if lowered in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_engine_options(parser):
    parser.add_argument("--backend", default="paddle", choices=("paddle", "onnxruntime"),
                        help="onnxruntime needs an export made with --to_onnx")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where the model runs")
    parser.add_argument("--gpu_id", type=int, default=0, help="which GPU with --device gpu")
    parser.add_argument("--cpu_threads", type=int, default=2, help="CPU threads for the engine")
    parser.add_argument("--enable_mkldnn", type=str2bool, default=True, help="oneDNN kernels on CPU (true/false)")
    parser.add_argument("--use_tensorrt", type=str2bool, default=False, help="TensorRT on GPU (true/false)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"), help="fp16 needs --device gpu")
    parser.add_argument("--threshold", type=float, default=None,
                        help="score threshold for labels (default: the one stored with the model)")
    parser.add_argument("--threshold_policy", default=None,
                        help=f"recompute the threshold from the model's calibration: {POLICY_HELP}")


def predictor_options(args, max_batch_size):
    """Predictor(model_dir, **these) for parsed ``add_engine_options`` arguments."""
    return {"backend": args.backend, "device": args.device, "cpu_threads": args.cpu_threads,
            "enable_mkldnn": args.enable_mkldnn, "use_tensorrt": args.use_tensorrt,
            "precision": args.precision, "max_batch_size": max_batch_size, "gpu_id": args.gpu_id,
            "threshold": args.threshold, "threshold_policy": args.threshold_policy}
