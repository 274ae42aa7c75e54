"""The command lines: main.py (train / eval / infer / distill), export_model.py, infer.py and
serve.py at the top of the repository call these modules; an installed package has them as the
commands adkit, adkit-export, adkit-infer and adkit-serve (pyproject.toml). Each parses,
validates and dispatches; the work is done by the layers below."""
