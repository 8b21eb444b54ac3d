"""Command-line helpers shared by the step scripts."""

from __future__ import annotations

import argparse
import logging
import sys


def str2bool(value: str) -> bool:
    """Parse MLflow's string params ``true``/``false`` (also 1/0, yes/no)."""
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="Debug logging.")


def run_step(parse_args, body, argv: list[str] | None, expected: tuple[type[BaseException], ...] = (ValueError,)
             ) -> int:
    """A step's ``main``: parse flags, configure logging, run the body. An expected input error becomes one line
    on stderr and exit code 2, not a stack trace."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        body(args)
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def optional(kind):
    """An argparse type where an empty string means "not set" (MLproject params cannot default to None)."""

    def parse(value: str):
        if str(value).strip() == "":
            return None
        return kind(value)

    parse.__name__ = f"optional {kind.__name__}"
    return parse


def optional_bool(value: str) -> bool | None:
    return None if str(value).strip() == "" else str2bool(value)
