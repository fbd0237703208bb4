"""Command-line flags generated from a settings dataclass: every field is a `--flag` with the field's default
(help text and allowed values from `field(metadata={"help": ..., "choices": ...})` where a field has them), so
settings are defined once."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")
_TYPES = {"int": int, "float": float, "str": str}


def add_flags(parser: argparse.ArgumentParser, settings: type) -> None:
    """One `--field-name` per field of the dataclass `settings` (bools become --x / --no-x)."""
    for spec in dataclasses.fields(settings):
        flag = "--" + spec.name.replace("_", "-")
        kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        extra: dict[str, Any] = {key: spec.metadata[key] for key in ("help", "choices") if key in spec.metadata}
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **extra)
        else:
            parser.add_argument(flag, type=_TYPES[kind], default=default, **extra)


def from_flags(settings: type[T], args: argparse.Namespace) -> T:
    """The dataclass `settings` filled from parsed flags (other attributes of `args` are ignored)."""
    return settings(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(settings)})
