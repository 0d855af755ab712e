"""Command lines over :class:`lsmooth.train.Config`: one flag per Config field, one-line errors.

A setting is declared once, as a Config field (default and help text); :func:`add_config_flags`
turns every field into a flag (``noise_kind`` -> ``--noise-kind``, booleans -> ``--x/--no-x``), and
:func:`config_from_args` turns the parsed flags back into a Config. :class:`Parser` and
:func:`error_line` print a bad input as one line, no usage block and no traceback, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Collection

from lsmooth.checkpoint import ResumeError
from lsmooth.data import DataError
from lsmooth.distributed import LaunchError
from lsmooth.train import PRESETS, Config, ConfigError
from lsmooth.weights import WeightsUnavailable

__all__ = ["USER_ERRORS", "Parser", "add_config_flags", "config_from_args", "error_line", "given_flags"]

# What a command line reports as one line ("prog: error: ...") with exit code 2.
USER_ERRORS = (ConfigError, DataError, ResumeError, WeightsUnavailable, LaunchError)


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line: ``prog: error: ... (see --help)``, exit code 2."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _flag_type(name: str) -> type:
    """``int`` for ``int | None`` and so on (the annotations are strings here)."""
    hint = typing.get_type_hints(Config)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [t for t in typing.get_args(hint) if t is not type(None)]
    return hint


def _preset_help(name: str) -> str:
    values = {dataset: preset[name] for dataset, preset in PRESETS.items() if name in preset}
    return " (default: " + ", ".join(f"{d} {v}" for d, v in values.items()) + ")" if values else ""


def add_config_flags(parser: argparse.ArgumentParser, skip: Collection[str] = ()) -> None:
    """One flag per Config field, except the fields named in ``skip`` (which keep their Config default)."""
    for f in dataclasses.fields(Config):
        if f.name in skip:
            continue
        kind, meta = _flag_type(f.name), dict(f.metadata)
        text = (meta.pop("help") + _preset_help(f.name)).replace("%", "%%")
        options = {"default": f.default, "help": text, **meta}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
        if f.default is None:  # "None" in --help says nothing; the help text says what it becomes
            options["help"] += "%(default).0s"
        parser.add_argument("--" + f.name.replace("_", "-"), **options)


def config_from_args(args: argparse.Namespace, **overrides) -> Config:
    """The Config of the parsed flags that are Config fields; ``overrides`` replace or fill fields."""
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(**({k: v for k, v in vars(args).items() if k in names} | overrides))


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags written in ``argv``, not filled in from defaults."""
    defaults = {a.dest: a.default for a in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action in parser._actions:
            action.default = defaults[action.dest]


def error_line(prog: str, error: BaseException) -> int:
    """Print ``error`` as one line ``prog: error: ...`` on stderr; the exit code for bad input (2)."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2
