"""main.py --mode update: a new model version from the inspectors' reviews (doc/line.md).

    python main.py --mode update --model_dir output/patchcore/brick --reviews reviews.db \\
        --output_dir output/patchcore/brick_v2

--model_dir is a training (checkpoint) folder; --reviews serve.py's --review_db file or its CSV
export (GET /models/{name}/reviews?format=csv), whose rows name the kept images
(serve.py --keep_images). See adkit/pipelines/update.py for what is learnt and checked.
"""
from adkit.core.errors import UserError


def parse_args(argv):
    from adkit.options.config import HelpFormatter, OneLineParser

    parser = OneLineParser(prog="main.py --mode update", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--mode", choices=("update",), required=True, help="update")
    parser.add_argument("--model_dir", required=True, help="the checkpoint folder of the model to update")
    parser.add_argument("--reviews", required=True,
                        help="serve.py's --review_db SQLite file, or its CSV export")
    parser.add_argument("--output_dir", required=True, help="the new version's folder (must not exist)")
    parser.add_argument("--review_model", default=None,
                        help="the served model name whose reviews to use (needed when the file holds several)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds over the reviews")
    parser.add_argument("--cpu_threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--verbose", action="store_true", help="show Paddle's own C++ messages")
    args = parser.parse_args(argv)
    if args.folds < 2:
        raise UserError(f"--folds must be >= 2, got {args.folds}")
    return args


def run(argv):
    from adkit.pipelines.update import update

    args = parse_args(argv)
    update(args.model_dir, args.reviews, args.output_dir, args.review_model, args.folds,
           echo=lambda line: print(line, flush=True))
