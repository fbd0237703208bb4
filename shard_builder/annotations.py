"""Read CelebA's annotation files (torchvision layout) into one table, validating every line.

Every problem is reported as `file:line: what is wrong`, because a user with 202,599 lines needs to know
exactly where to look.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError
from shard_builder.format import NUM_ATTRIBUTES, PARTITION_CODES

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
PARTITION_FILE = "list_eval_partition.txt"


class AnnotationError(UserError):
    """A malformed, inconsistent or missing annotation; the message names file and line."""


@dataclass
class CelebaAnnotations:
    root: Path
    attribute_names: list[str]
    files: list[str]  # image file names, in the attribute file's order
    attributes: np.ndarray  # [N, 40] uint8 in {0, 1}
    identities: np.ndarray  # [N] int64
    splits: list[str]  # "train" | "valid" | "test"

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)


def resolve_root(root: Path) -> Path:
    """Accept the folder holding `img_align_celeba/` or its parent holding `celeba/` (torchvision's root)."""
    root = Path(root)
    for candidate in (root, root / "celeba"):
        if (candidate / IMAGE_DIR).is_dir():
            return candidate
    raise AnnotationError(f"{root}: no {IMAGE_DIR}/ folder here or in {root / 'celeba'}")


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file is missing")
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not an ASCII text file ({err})") from None
    return text.splitlines()  # handles CRLF and LF alike


def _parse_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    lines = _lines(path)
    if len(lines) < 2:
        raise AnnotationError(f"{path}: expected a count line and a header line, found {len(lines)} lines")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise AnnotationError(f"{path}:1: expected the number of images, found {lines[0][:40]!r}") from None
    names = lines[1].split()
    if len(names) != NUM_ATTRIBUTES:
        raise AnnotationError(f"{path}:2: expected {NUM_ATTRIBUTES} attribute names, found {len(names)}")
    rows = [(number, line) for number, line in enumerate(lines[2:], start=3) if line.strip()]
    if len(rows) != count:
        raise AnnotationError(f"{path}:1: count line says {count} images but the file lists {len(rows)}")
    files: list[str] = []
    values = np.empty((count, NUM_ATTRIBUTES), dtype=np.uint8)
    for i, (number, line) in enumerate(rows):
        fields = line.split()
        if len(fields) != NUM_ATTRIBUTES + 1:
            raise AnnotationError(
                f"{path}:{number}: expected a file name and {NUM_ATTRIBUTES} values, found {len(fields)} fields")
        for value in fields[1:]:
            if value not in ("1", "-1"):
                raise AnnotationError(f"{path}:{number}: attribute value {value!r} is not 1 or -1")
        files.append(fields[0])
        values[i] = [value == "1" for value in fields[1:]]
    return names, files, values


def _parse_pairs(path: Path, what: str) -> dict[str, tuple[int, int]]:
    """`file value` lines -> {file: (value, line number)}."""
    pairs: dict[str, tuple[int, int]] = {}
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise AnnotationError(f"{path}:{number}: expected `file {what}`, found {len(fields)} fields")
        name, value = fields
        try:
            parsed = int(value)
        except ValueError:
            raise AnnotationError(f"{path}:{number}: {what} {value!r} is not an integer") from None
        if name in pairs:
            raise AnnotationError(f"{path}:{number}: {name} is listed twice (first at line {pairs[name][1]})")
        pairs[name] = (parsed, number)
    return pairs


def read_annotations(root: Path) -> CelebaAnnotations:
    """Parse and cross-check the three annotation files; the attribute file defines the image list."""
    root = resolve_root(root)
    names, files, attributes = _parse_attributes(root / ATTR_FILE)
    identities = _parse_pairs(root / IDENTITY_FILE, "identity")
    partitions = _parse_pairs(root / PARTITION_FILE, "partition")
    for path, table in ((root / IDENTITY_FILE, identities), (root / PARTITION_FILE, partitions)):
        missing = [name for name in files if name not in table]
        if missing:
            raise AnnotationError(
                f"{path}: {len(missing)} image(s) of {ATTR_FILE} are not listed, e.g. {missing[0]}")
        listed = set(files)
        extra = [(name, line) for name, (_, line) in table.items() if name not in listed]
        if extra:
            name, line = min(extra, key=lambda item: item[1])
            raise AnnotationError(f"{path}:{line}: {name} is not in {ATTR_FILE} ({len(extra)} such line(s))")
    splits = []
    for name in files:
        code, line = partitions[name]
        if code not in PARTITION_CODES:
            raise AnnotationError(f"{root / PARTITION_FILE}:{line}: unknown partition code {code} for {name}"
                                  f" (expected 0 train, 1 valid, 2 test)")
        splits.append(PARTITION_CODES[code])
    for name in files:
        identity, line = identities[name]
        if identity < 0:
            raise AnnotationError(f"{root / IDENTITY_FILE}:{line}: negative identity {identity} for {name}")
    return CelebaAnnotations(
        root=root,
        attribute_names=names,
        files=files,
        attributes=attributes,
        identities=np.array([identities[name][0] for name in files], dtype=np.int64),
        splits=splits,
    )
