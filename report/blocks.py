"""What a report section is made of, independent of how it is drawn: the HTML page and the PDF render the same
blocks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Union


@dataclass(frozen=True)
class Text:
    text: str
    note: bool = False  # a warning or caveat, drawn highlighted


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list]
    marked: Collection[int] = ()  # row indices drawn highlighted


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Figures:
    figures: list[Figure]
    side_by_side: bool = False  # two columns (a pair to compare) rather than a flowing grid


@dataclass(frozen=True)
class Fields:
    """Every scalar field of a JSON document: collapsed on the page, left out of the PDF."""
    label: str
    rows: list[tuple[str, object]]


Block = Union[Text, Heading, Table, Figures, Fields]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dict -> [(dotted key, scalar)], long lists and lists of records left out (figures and tables show them)."""
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, name + ".")
        elif not isinstance(value, list) or (len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value)):
            rows.append((name, value))
    return rows


def fields(data: dict, label: str = "all fields") -> Fields:
    return Fields(label, flatten(data))


def records_table(records: list[dict], columns: list[str]) -> Table:
    return Table(columns, [[record.get(c) for c in columns] for record in records])


def matrix_table(data: dict[str, dict], corner: str = "") -> Table:
    """{row: {column: scalar}} -> a table with one row per outer key."""
    columns = list(dict.fromkeys(c for inner in data.values() for c in inner))
    return Table([corner, *columns], [[row.replace("_", " "), *(inner.get(c) for c in columns)]
                                      for row, inner in data.items()])


def format_value(value) -> str:
    """A cell's text: floats to 4 decimals (1 above 100), thousands separated, short lists joined."""
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value):
        return ", ".join(format_value(v) for v in value)
    return "" if value is None else str(value)
