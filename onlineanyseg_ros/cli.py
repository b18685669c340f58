"""The `onlineanyseg` command: one entry point, one subcommand per job.

Each module in ``onlineanyseg_ros.commands`` adds its parser in ``register(subparsers)``
and sets ``func`` to a callable ``(args) -> int``; heavy imports happen inside ``func``.
"""

import argparse
import importlib
import logging
import sys
from typing import List, Optional

# Subcommand modules, in the order `--help` lists them.
COMMANDS = ('synth', 'masks', 'run', 'eval', 'bag', 'play', 'pipeline', 'demo', 'query')


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog='onlineanyseg',
        description='Online zero-shot 3D instance segmentation (OnlineAnySeg) tools.')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    subparsers.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f'onlineanyseg_ros.commands.{name}')
        except ModuleNotFoundError as error:
            if error.name != f'onlineanyseg_ros.commands.{name}':
                raise
            continue  # subcommand not part of this build
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the subcommand, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    return int(args.func(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
