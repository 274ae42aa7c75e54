#!/usr/bin/env python
"""Export a trained model to a static inference graph (and ONNX, int8).

The command line is adkit/commands/export.py (`python export_model.py --help`); an installed package
has it as the `adkit-export` command."""
from adkit.commands.export import main

if __name__ == "__main__":
    main()
