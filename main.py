#!/usr/bin/env python
"""Train, evaluate and run anomaly detectors (train / eval / infer / distill).

The command line is adkit/commands/main.py (`python main.py --help`); an installed package
has it as the `adkit` command."""
from adkit.commands.main import main

if __name__ == "__main__":
    main()
