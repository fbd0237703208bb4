"""Command-line flags generated from a settings dataclass: every field is a `--flag` with the field's default
(help text and allowed values from `field(metadata={"help": ..., "choices": ...})` where a field has them), so
settings are defined once. Tuple fields take comma-separated values (`--channels 16,32,64`), optional ones also
`none`."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")
_TYPES = {"int": int, "float": float, "str": str}


def value_parser(kind: str) -> Callable[[str], Any]:
    """The parser of one flag value for a field annotated `kind` (the annotation as text): int, float, str,
    `X | None`, `tuple[X, ...]` or `tuple[X, X]`."""
    if kind.endswith(" | None"):
        inner = value_parser(kind.removesuffix(" | None"))
        return lambda text: None if text.lower() == "none" else inner(text)
    if kind.startswith("tuple["):
        items = [item.strip() for item in kind.removeprefix("tuple[").removesuffix("]").split(",")]
        element, length = _TYPES[items[0]], None if items[-1] == "..." else len(items)

        def parse_tuple(text: str) -> tuple:
            values = tuple(element(item) for item in text.split(","))
            if length is not None and len(values) != length:
                raise argparse.ArgumentTypeError(f"{text!r}: expected {length} comma-separated values")
            return values

        parse_tuple.__name__ = kind  # argparse names the type in its "invalid value" message
        return parse_tuple
    return _TYPES[kind]


def flag_text(value: Any) -> str:
    """A value as it is written on the command line (tuples comma-separated)."""
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return "''" if value == "" else str(value)


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings: type,
              defaults: Mapping[str, str] | None = None) -> None:
    """One `--field-name` per field of the dataclass `settings` (bools become --x / --no-x).

    With `defaults` (field name -> where its default comes from, for fields whose default is not the dataclass's),
    a flag left off the command line is absent from the parsed namespace (`given_flags` then returns only those
    given), so a caller can lay them over defaults of its own; --help names every flag's default.
    """
    for spec in dataclasses.fields(settings):
        flag = "--" + spec.name.replace("_", "-")
        kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
        default = spec.default if spec.default is not dataclasses.MISSING else (
            spec.default_factory() if spec.default_factory is not dataclasses.MISSING else None)
        extra: dict[str, Any] = {key: spec.metadata[key] for key in ("help", "choices") if key in spec.metadata}
        if defaults is not None:
            note = defaults.get(spec.name, flag_text(default))
            extra["help"] = f"{extra['help']} (default: {note})" if "help" in extra else f"default: {note}"
            default = argparse.SUPPRESS
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **extra)
        else:
            parser.add_argument(flag, type=value_parser(kind), default=default, **extra)


def from_flags(settings: type[T], args: argparse.Namespace) -> T:
    """The dataclass `settings` filled from parsed flags (other attributes of `args` are ignored)."""
    return settings(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(settings)})


def given_flags(settings: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of `settings` whose flags were given (parsed after `add_flags(..., defaults=...)`)."""
    return {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(settings) if hasattr(args, spec.name)}
