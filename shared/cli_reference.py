"""Writes docs/commands.md: every `edgefleet` command's help, from the parsers themselves.

    python -m shared.cli_reference > docs/commands.md

A test compares the file with what this prints, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os

from shared.cli import build_parser

WIDTH = "100"

HEADER = """# Command reference

Every `edgefleet` command with its options, as `--help` prints them. Generated from the code
by `python -m shared.cli_reference > docs/commands.md`; do not edit by hand.
"""


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """The parser's subcommands, by name, in the order they were added."""
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(action.choices.items())
    return found


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command below `parser` (leaves and groups), depth first."""
    found = [(path, parser)]
    for name, child in subcommands(parser):
        found.extend(walk(child, (*path, name)))
    return found


def reference() -> str:
    """The whole reference as Markdown (wrapped to `$COLUMNS`, as argparse does)."""
    root = build_parser()
    parts = [HEADER]
    for path, parser in walk(root, ("edgefleet",))[1:]:
        if parser.add_help is False:
            continue  # a placeholder for a command whose extra is not installed
        parser.prog = " ".join(path)
        level = "#" * min(len(path), 4)
        parts.append(f"{level} `{' '.join(path)}`\n\n```\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    # Help text is wrapped to the terminal's width: fix it, so the file is the same everywhere.
    os.environ["COLUMNS"] = WIDTH
    print(reference(), end="")
