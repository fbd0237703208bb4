"""Read CelebA's annotation files (any layout of `layouts`) into one table, validating every line.

Every problem is reported as `file:line: what is wrong`, because a user with 202,599 lines needs to know
exactly where to look. The `.txt` files are CelebA's own (space-separated, a count line before the header of
the attribute file); the `.csv` files are the Kaggle copy's (comma-separated, an `image_id,...` header line).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError
from shard_builder.format import NUM_ATTRIBUTES, PARTITION_CODES, UNKNOWN_IDENTITY


class AnnotationError(UserError):
    """A malformed, inconsistent or missing annotation; the message names file and line."""


@dataclass
class CelebaAnnotations:
    attribute_names: list[str]
    files: list[str]  # image file names, in the attribute file's order
    attributes: np.ndarray  # [N, 40] uint8 in {0, 1}
    identities: np.ndarray  # [N] int64; UNKNOWN_IDENTITY throughout when there is no identity file
    splits: list[str]  # "train" | "valid" | "test"

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file is missing")
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not an ASCII text file ({err})") from None
    return text.splitlines()  # handles CRLF and LF alike


def _fields(line: str, csv: bool) -> list[str]:
    return [field.strip() for field in line.split(",")] if csv else line.split()


def _parse_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """CelebA's `count / header / file ±1 x40` text file, or Kaggle's `image_id,<40 names>` CSV."""
    lines = _lines(path)
    csv = path.suffix == ".csv"
    header_lines = 1 if csv else 2
    if len(lines) < header_lines:
        raise AnnotationError(f"{path}: expected {'a header line' if csv else 'a count line and a header line'}, "
                              f"found {len(lines)} lines")
    if not csv:
        try:
            count = int(lines[0].strip())
        except ValueError:
            raise AnnotationError(f"{path}:1: expected the number of images, found {lines[0][:40]!r}") from None
    names = _fields(lines[header_lines - 1], csv)[1 if csv else 0:]  # the CSV header starts with image_id
    if len(names) != NUM_ATTRIBUTES:
        raise AnnotationError(f"{path}:{header_lines}: expected {NUM_ATTRIBUTES} attribute names, found {len(names)}")
    rows = [(number, line) for number, line in enumerate(lines[header_lines:], start=header_lines + 1)
            if line.strip()]
    if not csv and len(rows) != count:
        raise AnnotationError(f"{path}:1: count line says {count} images but the file lists {len(rows)}")
    files: list[str] = []
    values = np.empty((len(rows), NUM_ATTRIBUTES), dtype=np.uint8)
    for i, (number, line) in enumerate(rows):
        fields = _fields(line, csv)
        if len(fields) != NUM_ATTRIBUTES + 1:
            raise AnnotationError(f"{path}:{number}: expected a file name and {NUM_ATTRIBUTES} values, "
                                  f"found {len(fields) - 1} values")
        for value in fields[1:]:
            if value not in ("1", "-1"):
                raise AnnotationError(f"{path}:{number}: attribute value {value!r} is not 1 or -1")
        files.append(fields[0])
        values[i] = [value == "1" for value in fields[1:]]
    return names, files, values


def _parse_pairs(path: Path, what: str) -> dict[str, tuple[int, int]]:
    """`file value` lines (or a CSV's `file,value` lines after its header) -> {file: (value, line number)}."""
    csv = path.suffix == ".csv"
    pairs: dict[str, tuple[int, int]] = {}
    for number, line in enumerate(_lines(path)[csv:], start=1 + csv):
        fields = _fields(line, csv) if line.strip() else []
        if not fields:
            continue
        if len(fields) != 2:
            raise AnnotationError(f"{path}:{number}: expected `file{',' if csv else ' '}{what}`, "
                                  f"found {len(fields)} fields")
        name, value = fields
        try:
            parsed = int(value)
        except ValueError:
            raise AnnotationError(f"{path}:{number}: {what} {value!r} is not an integer") from None
        if name in pairs:
            raise AnnotationError(f"{path}:{number}: {name} is listed twice (first at line {pairs[name][1]})")
        pairs[name] = (parsed, number)
    return pairs


def read_annotations(attribute_file: Path, partition_file: Path, identity_file: Path | None) -> CelebaAnnotations:
    """Parse and cross-check the annotation files (a layout's, see `layouts`); the attribute file defines the
    image list. Without an identity file every identity is UNKNOWN_IDENTITY."""
    names, files, attributes = _parse_attributes(attribute_file)
    tables = {partition_file: _parse_pairs(partition_file, "partition")}
    if identity_file is not None:
        tables[identity_file] = _parse_pairs(identity_file, "identity")
    for path, table in tables.items():
        missing = [name for name in files if name not in table]
        if missing:
            raise AnnotationError(
                f"{path}: {len(missing)} image(s) of {attribute_file.name} are not listed, e.g. {missing[0]}")
        listed = set(files)
        extra = [(name, line) for name, (_, line) in table.items() if name not in listed]
        if extra:
            name, line = min(extra, key=lambda item: item[1])
            raise AnnotationError(f"{path}:{line}: {name} is not in {attribute_file.name} "
                                  f"({len(extra)} such line(s))")
    splits = []
    for name in files:
        code, line = tables[partition_file][name]
        if code not in PARTITION_CODES:
            raise AnnotationError(f"{partition_file}:{line}: unknown partition code {code} for {name}"
                                  f" (expected 0 train, 1 valid, 2 test)")
        splits.append(PARTITION_CODES[code])
    identities = np.full(len(files), UNKNOWN_IDENTITY, dtype=np.int64)
    if identity_file is not None:
        for i, name in enumerate(files):
            identity, line = tables[identity_file][name]
            if identity < 0:
                raise AnnotationError(f"{identity_file}:{line}: negative identity {identity} for {name}")
            identities[i] = identity
    return CelebaAnnotations(
        attribute_names=names,
        files=files,
        attributes=attributes,
        identities=identities,
        splits=splits,
    )
