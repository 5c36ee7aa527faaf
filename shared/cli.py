"""The `edgefleet` command line.

Subcommand groups live with the code they drive (`agent.cli`, `control_plane.cli`, ...) and
register themselves through the `edgefleet.commands` entry-point group, so this module never
imports the agent or the control plane: each group's `register(subparsers)` adds its parsers
and sets `func` (taking the parsed namespace, returning an exit status) on each of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser() -> argparse.ArgumentParser:
    """Build the root parser with every installed subcommand group."""
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="EdgeFleet: serve signed machine-learning models at the edge.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in sorted(entry_points(group="edgefleet.commands"), key=lambda e: e.name):
        try:
            register: Register = entry.load()
        except ImportError as error:
            # An optional part whose extra is not installed (a device has no control-plane
            # database driver): say so when it is asked for, and keep the other commands.
            _unavailable(subparsers, entry.name, error)
            continue
        register(subparsers)
    return parser


def _unavailable(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, error: Exception
) -> None:
    """A placeholder command that explains what to install."""
    reason = f"needs a package that is not installed ({error}); install the matching extra, e.g. "
    reason += "pip install 'edgefleet[control-plane]'"
    parser = subparsers.add_parser(name, help=f"(unavailable: {reason})", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def explain(args: argparse.Namespace) -> int:
        print(f"error: edgefleet {name} {reason}", file=sys.stderr)
        return 1

    parser.set_defaults(func=explain)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, configure logging and run the chosen subcommand."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:  # a group was named without one of its commands
        parser.parse_args([*(argv or sys.argv[1:]), "--help"])
        return 2
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
