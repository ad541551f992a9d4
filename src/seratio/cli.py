"""The `seratio` command: parses, delegates, and turns user errors into one line.

Each subcommand lives in `seratio.commands.<name>` and exposes
`register(subparsers) -> None`, which adds its parser and sets `func`.
Keeping them apart lets each area own its options without one giant file.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import numbers
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from seratio import __version__
from seratio.__main__ import INTERRUPTED
from seratio.errors import SeratioError, user_message

COMMANDS = ("info", "train", "evaluate", "report", "compare", "study")
INNERMOST = "_seratio_parser"
"""Where `Parser` notes, in the parsed namespace, which command's parser parsed it."""


class Parser(argparse.ArgumentParser):
    """argparse's parser without abbreviations; `add_subparsers` makes every subparser of this class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        """Notes the innermost command's parser: a subcommand's namespace is parsed, and so marked, first."""
        parsed, extras = super().parse_known_args(args, namespace)
        if not hasattr(parsed, INNERMOST):
            setattr(parsed, INNERMOST, self)
        return parsed, extras

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        """argparse reports an unknown option as the top-level `seratio`'s, with no hint; this says it
        as the command's that got it (`seratio study run`), with the nearest option it has."""
        parsed, extras = self.parse_known_args(args, namespace)
        innermost = getattr(parsed, INNERMOST)
        delattr(parsed, INNERMOST)
        if extras:
            innermost.unrecognized(extras)
        return parsed

    def unrecognized(self, extras: list[str]) -> NoReturn:
        options = [option for action in self._actions for option in action.option_strings]
        options_given = extras[:extras.index("--")] if "--" in extras else extras  # after "--", words are no options
        typed = list(dict.fromkeys(name for extra in options_given if extra.startswith("-")
                                   if (name := extra.split("=")[0]).lstrip("-")))
        hints = {name: meant for name in typed if (meant := _nearest(name, options))}
        if len(hints) == 1 and len(typed) == 1:
            hint = f"; did you mean {' or '.join(*hints.values())}?"
        elif hints:  # one hint per unknown option, so two of them do not read as alternatives
            hint = "; did you mean " + ", ".join(f"{' or '.join(meant)} for {name}" for name, meant in hints.items()) + "?"
        else:
            hint = f"; {self.prog} -h lists what it takes"
        self.exit(2, f"{self.prog}: error: unrecognized arguments: {' '.join(extras)}{hint}\n")

    def error(self, message: str) -> NoReturn:
        """One line, like every other refusal: argparse printed its usage block first, up to 18 lines
        above the message that named the mistake; `-h` still shows it."""
        self.exit(2, f"{self.prog}: error: {message}; {self.prog} -h lists what it takes\n")


def _nearest(typed: str, options: list[str]) -> list[str]:
    """What an unknown option was likely meant as: the options it abbreviates (none is accepted
    abbreviated, see `build_parser`), else the one spelled most alike, never help. Spelling alone
    made `--ep` closest to `--help`, since the two dashes count as shared letters."""
    if abbreviated := [option for option in options if option.startswith(typed) and option.startswith("--")]:
        return abbreviated
    return difflib.get_close_matches(typed, [o for o in options if o not in ("-h", "--help")], n=1, cutoff=0.6)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with `only` just that command's, so `seratio train` never pays for
    importing the report stack (matplotlib, scipy) or the study stack (optuna, SQLAlchemy).

    No option may be abbreviated: `study run --seed 5` would otherwise mean `--seeds 5`, five
    times the training that a user of `train --seed 5` asked for.
    """
    parser = Parser(
        prog="seratio",
        description="Study the reduction ratio (RR) of Squeeze-and-Excitation blocks in CIFAR ResNets.",
    )
    parser.add_argument("--version", action="version", version=f"seratio {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"seratio.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str | os.PathLike[str] | int | float] | str | None = None) -> int:
    """Run one `seratio` command line and return its exit code as a shell would see it: 0 done, 2
    refused, 130 interrupted. From Python give the arguments as a list (paths and numbers are
    written as text) or as one string, split as a shell would; None reads `sys.argv`, which only
    the `seratio` command itself does."""
    try:  # from the imports on: a Ctrl-C while torch loads is an interruption too, not a traceback
        arguments = sys.argv[1:] if argv is None else _arguments(argv)
        parser = build_parser(arguments[0] if arguments and arguments[0] in COMMANDS else None)
        args = parser.parse_args(arguments)
        return int(args.func(args) or 0)
    except (SeratioError, OSError) as error:
        print(f"seratio: error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seratio: interrupted", file=sys.stderr)
        return INTERRUPTED
    except SystemExit as stop:  # argparse ends --help, --version and a bad option by exiting
        if argv is None:
            raise
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)


def _arguments(argv: Sequence[str | os.PathLike[str] | int | float] | str) -> list[str]:
    """A caller from Python writes `main(["train", "--out", Path("r"), "--seed", 3])`; argparse
    takes only text, and would read a plain string letter by letter."""
    if isinstance(argv, str):
        return shlex.split(argv)
    arguments = []
    for value in argv:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
            raise SeratioError(f"argument {value!r} is not text, a path or a number; give the command line "
                               "as a list of those, e.g. ['info', '--rr', '8,2,16']")
        arguments.append(str(value))
    return arguments
