#!/usr/bin/env python
"""Serve a model folder over HTTP for the inspection line.

The command line is adkit/commands/serve.py (`python serve.py --help`); an installed package
has it as the `adkit-serve` command."""
from adkit.commands.serve import main

if __name__ == "__main__":
    main()
