"""The read side of the shard format: file names, `dataset.json`, DALI index text, member headers, and `open_split`.

Every reader (the loaders, `verify`, eval, edit) and the writer go through these, so a missing split folder,
manifest or index, or a build of another format, is reported the same way everywhere.
"""
from __future__ import annotations

import difflib
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from common.errors import UserError
from shard_builder import format as fmt

DATASET_JSON = "dataset.json"
MANIFEST = "manifest.parquet"


class BuildError(UserError):
    """A problem with a shard build (or the input and output folders of one); the message names the file."""


def load_dataset_json(out: Path | str) -> dict:
    """The `dataset.json` of a complete build of this format (it is written last, so it marks completion)."""
    path = Path(out) / DATASET_JSON
    if not path.is_file():
        raise BuildError(f"{path}: missing; {out} is not a complete shard build")
    try:
        dataset = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BuildError(f"{path}: not valid JSON ({err})") from None
    if dataset.get("format") != fmt.FORMAT_NAME or dataset.get("format_version") != fmt.FORMAT_VERSION:
        raise BuildError(f"{path}: format {dataset.get('format')!r} v{dataset.get('format_version')} is not "
                         f"{fmt.FORMAT_NAME} v{fmt.FORMAT_VERSION}")
    return dataset


def index_text(encoding: str, keys: list[str], offsets: list[int], sizes: list[int]) -> str:
    """DALI's webdataset index (v1.2, as `wds2idx` writes it): one line per sample, `ext offset size name`."""
    lines = [f"v1.2 {len(keys)}"]
    lines += [f"{encoding} {offset} {size} {key}.{encoding}" for key, offset, size in zip(keys, offsets, sizes)]
    return "\n".join(lines) + "\n"


def attribute_index(name: str, names: Sequence[str], error: type[UserError] = UserError) -> int:
    """Index of a CelebA attribute by name (case-insensitive); an unknown name raises `error` listing the closest
    real ones."""
    lower = {n.lower(): i for i, n in enumerate(names)}
    if name.lower() in lower:
        return lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.5)
    hint = ", ".join(names[lower[c]] for c in close) if close else "none; the 40 names are " + " ".join(names)
    raise error(f"unknown attribute {name!r}; close matches: {hint}")


def member_tar_info(name: str, size: int) -> tarfile.TarInfo:
    """The tar header of a member as the builder writes it (USTAR, fixed metadata: byte-identical builds)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def header_names(header: bytes, name: str, size: int) -> bool:
    """Whether a 512-byte tar header is the one for member `name` of `size` bytes: its name field (NUL-padded)
    and its octal size field, compared as the bytes the builder writes, without parsing the header."""
    expected = name.encode()
    return header[:len(expected) + 1] == expected + b"\0" and header[124:135] == b"%011o" % size


def parse_header(header: bytes) -> tuple[str, int] | None:
    """(name, size) of a tar header, or None when it is not a valid one (for error messages)."""
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return info.name, info.size


@dataclass
class Split:
    path: Path
    name: str
    dataset: dict
    keys: np.ndarray  # [N] str, in shard order
    shard_index: np.ndarray  # [N] int: which of `shards` holds the sample
    position: np.ndarray  # [N] int: member index inside its shard
    offset: np.ndarray  # [N] int: byte offset of the member's data in its shard
    size: np.ndarray  # [N] int: member size in bytes
    attributes: np.ndarray  # [N, 40] uint8 in {0,1}
    identities: np.ndarray  # [N] int64
    shards: list[Path]

    @property
    def encoding(self) -> str:
        return self.dataset["encoding"]

    @property
    def attribute_names(self) -> list[str]:
        return self.dataset["attribute_names"]

    def __len__(self) -> int:
        return len(self.keys)

    def index_path(self, shard: Path) -> Path:
        return shard.with_suffix(".idx")


def open_split(path: Path | str) -> Split:
    """`path` is a split folder (`OUT/train`); `OUT/dataset.json` must describe a complete build."""
    path = Path(path)
    if not path.is_dir():
        raise BuildError(f"{path}: split folder does not exist")
    dataset = load_dataset_json(path.parent)
    name = path.name
    if name not in dataset.get("shards", {}):
        raise BuildError(f"{path}: {path.parent / DATASET_JSON} lists no split named {name!r}")
    if dataset.get("encoding") not in fmt.ENCODINGS:
        raise BuildError(f"{path.parent / DATASET_JSON}: unknown encoding {dataset.get('encoding')!r}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BuildError(f"{manifest_path}: manifest is missing")
    try:
        table = pq.read_table(manifest_path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise BuildError(f"{manifest_path}: cannot read manifest ({err})") from None
    shards = [path / shard for shard in dataset["shards"][name]]
    for shard in shards:
        if not shard.is_file():
            raise BuildError(f"{shard}: shard listed in dataset.json is missing")
        if not shard.with_suffix(".idx").is_file():
            raise BuildError(f"{shard.with_suffix('.idx')}: DALI index is missing (re-run build-shards)")
    shard_number = {shard.name: i for i, shard in enumerate(shards)}
    shard_names = table.column("shard").to_pylist()
    unknown = set(shard_names) - set(shard_number)
    if unknown:
        raise BuildError(f"{manifest_path}: names shard(s) not in dataset.json: {sorted(unknown)[:3]}")
    if table.num_rows != dataset["counts"][name]:
        raise BuildError(f"{manifest_path}: {table.num_rows} rows but dataset.json counts {dataset['counts'][name]}")
    attributes = table.column("attributes").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return Split(
        path=path,
        name=name,
        dataset=dataset,
        keys=np.array(table.column("key").to_pylist()),
        shard_index=np.array([shard_number[s] for s in shard_names], dtype=np.int64),
        position=table.column("position").to_numpy().astype(np.int64),
        offset=table.column("offset").to_numpy(),
        size=table.column("size").to_numpy().astype(np.int64),
        attributes=attributes.reshape(-1, fmt.NUM_ATTRIBUTES).astype(np.uint8),
        identities=table.column("identity").to_numpy(),
        shards=shards,
    )
