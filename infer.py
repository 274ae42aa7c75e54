#!/usr/bin/env python
"""Run an exported model (or a checkpoint) on images with Paddle Inference or ONNX Runtime.

The command line is adkit/commands/infer.py (`python infer.py --help`); an installed package
has it as the `adkit-infer` command."""
from adkit.commands.infer import main

if __name__ == "__main__":
    main()
