"""Reading members straight out of the shards by the manifest's offsets, checked, and decoding them in batches.

The webdataset workers and the resident loader read through here; the DALI loader reads the tars itself
but goes through the same up-front checks (`open_checked`) and label check (`check_labels`). Checks:

- up front, per split: member sizes fit the encoding dataset.json names, every DALI index matches the
  manifest, every shard is long enough for its members and its first member is the one the manifest names;
- per member read: its tar header names the manifest's key and size;
- per batch: the label block inside each member equals the manifest's labels.

A raw member's pixels carry no checksum, so damage that only touches pixels goes unnoticed (as in any tar).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

import torch

from loaders.contract import LoaderError, nchw
from shard_builder import format as fmt
from shard_builder.read import (DATASET_JSON, MANIFEST, BuildError, Split, header_names, index_text, open_split,
                                parse_header)

TAR_BLOCK = 512
RAW_MEMBER_BYTES = fmt.RAW_MEMBER_BYTES
READ_RUN = 64  # members per read: ~850 KB of raw members in one sequential read


def open_checked(split_dir: Path | str) -> Split:
    """`open_split` plus the up-front checks; every problem is a `LoaderError` naming the file."""
    try:
        split = open_split(split_dir)
    except BuildError as err:
        raise LoaderError(str(err)) from None
    for shard, rows in zip(split.shards, rows_by_shard(split)):
        _check_shard(split, shard, rows)
    return split


def rows_by_shard(split: Split) -> list[np.ndarray]:
    """For each shard, the manifest rows of its members in the order they sit in it."""
    order = np.lexsort((split.position, split.shard_index))
    counts = np.bincount(split.shard_index, minlength=len(split.shards))
    return np.split(order, np.cumsum(counts)[:-1])


def member_name(split: Split, row: int) -> str:
    return f"{split.keys[row]}.{split.encoding}"


def _check_shard(split: Split, shard: Path, rows: np.ndarray) -> None:
    encoding, dataset_json = split.encoding, split.path.parent / DATASET_JSON
    if len(rows) == 0:
        raise LoaderError(f"{split.path / MANIFEST}: lists no member of {shard.name}")
    sizes = split.size[rows]
    if encoding == "raw" and (sizes != RAW_MEMBER_BYTES).any():
        bad = rows[np.flatnonzero(sizes != RAW_MEMBER_BYTES)[0]]
        raise LoaderError(f"{shard}: member {member_name(split, bad)} is {split.size[bad]} bytes, but a raw "
                          f"64x64 member is {RAW_MEMBER_BYTES} (built with another format than {dataset_json} says?)")
    index = split.index_path(shard)
    expected = index_text(encoding, [str(k) for k in split.keys[rows]], split.offset[rows].tolist(), sizes.tolist())
    found = index.read_text(errors="replace")
    if found != expected:
        extensions = {line.split(" ")[0] for line in found.splitlines()[1:] if line}
        if extensions - {encoding}:
            raise LoaderError(f"{index}: indexes {'/'.join(sorted(extensions))} members, but {dataset_json} says "
                              f"encoding {encoding!r} (shard built with another format?)")
        raise LoaderError(f"{index}: DALI index does not match {split.path / MANIFEST} (stale or damaged; "
                          f"re-run build-shards)")
    with open(shard, "rb") as stream:
        stream.seek(int(split.offset[rows[0]]) - TAR_BLOCK)
        _check_header(split, shard, rows[0], stream.read(TAR_BLOCK))
    last = rows[-1]
    end = int(split.offset[last] + split.size[last])
    length = shard.stat().st_size
    if length < end:
        raise LoaderError(f"{shard}: truncated: {length:,} bytes, but its last member "
                          f"{member_name(split, last)} ends at byte {end:,}")


def _check_header(split: Split, shard: Path, row: int, header: bytes) -> None:
    expected = member_name(split, row)
    if header_names(header, expected, int(split.size[row])):
        return
    parsed = parse_header(header)
    name, size = parsed or ("", -1)
    if parsed == (expected, split.size[row]):
        return  # written by another tar writer (e.g. a re-packed shard): same member, other header bytes
    at = int(split.offset[row]) - TAR_BLOCK
    if name.startswith(f"{split.keys[row]}.") and name != expected:
        raise LoaderError(f"{shard}: member {name!r} at byte {at:,}, but {split.path.parent / DATASET_JSON} says "
                          f"encoding {split.encoding!r} (shard built with another format?)")
    found = f"names {name!r} ({size} bytes)" if parsed and name.isprintable() else "is not a valid tar header"
    raise LoaderError(f"{shard}: the tar header at byte {at:,} {found}; the manifest puts {expected!r} "
                      f"({split.size[row]} bytes) there (corrupt shard or one from another build)")


def read_members(split: Split, rows: np.ndarray) -> Iterator[tuple[int, bytes]]:
    """Yield `(row, member bytes)` for manifest `rows` in the given order, seeking straight to each member.

    Neighbouring members of one shard (the common case: rows in stored order) are read with one sequential
    read of up to READ_RUN members, so a worker streams its part of a shard without touching the rest.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:  # e.g. a DataLoader worker with no batch this epoch (more workers than batches)
        return
    shard, position = split.shard_index[rows], split.position[rows]
    breaks = np.flatnonzero((np.diff(shard) != 0) | (np.diff(position) != 1)) + 1
    files: dict[int, object] = {}
    try:
        for run in np.split(rows, breaks):
            shard_number = int(split.shard_index[run[0]])
            stream = files.get(shard_number)
            if stream is None:
                stream = files[shard_number] = open(split.shards[shard_number], "rb")
            for start in range(0, len(run), READ_RUN):
                yield from _read_run(split, stream, split.shards[shard_number], run[start:start + READ_RUN])
    finally:
        for stream in files.values():
            stream.close()


def _read_run(split: Split, stream, shard: Path, rows: np.ndarray) -> Iterator[tuple[int, bytes]]:
    offsets, sizes = split.offset[rows].tolist(), split.size[rows].tolist()
    first, end = offsets[0] - TAR_BLOCK, offsets[-1] + sizes[-1]
    stream.seek(first)
    data = stream.read(end - first)
    if len(data) < end - first:
        raise LoaderError(f"{shard}: truncated: ends at byte {first + len(data):,}, but member "
                          f"{member_name(split, rows[-1])} ends at byte {end:,}")
    for row, offset, size in zip(rows.tolist(), offsets, sizes):
        at = offset - first
        _check_header(split, shard, row, data[at - TAR_BLOCK:at])
        yield row, data[at:at + size]


def check_labels(split: Split, rows: np.ndarray, labels: np.ndarray) -> None:
    """`labels` [B, 44] uint8: the label blocks sliced out of the members of manifest `rows`."""
    identities = np.ascontiguousarray(labels[:, fmt.NUM_ATTRIBUTES:]).view("<i4")[:, 0]
    good = (labels[:, :fmt.NUM_ATTRIBUTES] == split.attributes[rows]).all(axis=1)
    good &= identities == split.identities[rows]
    if not good.all():
        row = rows[np.flatnonzero(~good)[0]]
        raise LoaderError(f"{split.shards[split.shard_index[row]]}: the labels inside member {member_name(split, row)} "
                          f"differ from {split.path / MANIFEST} (corrupt shard or one from another build)")


def decode_members(split: Split, rows: np.ndarray, members: list[bytes]) -> np.ndarray:
    """Members of manifest `rows` -> dense uint8 HWC images [B, 64, 64, 3] (labels checked against the manifest)."""
    count = len(members)
    if split.encoding == "raw":
        labels, hwc = fmt.split_raw_members(np.frombuffer(b"".join(members), dtype=np.uint8).reshape(count, -1))
        check_labels(split, rows, labels)
    else:
        offset = fmt.LABEL_OFFSET["jpg"]
        labels = np.frombuffer(b"".join(m[offset:offset + fmt.LABEL_BYTES] for m in members), dtype=np.uint8)
        check_labels(split, rows, labels.reshape(count, fmt.LABEL_BYTES))
        hwc = np.empty((count, fmt.IMAGE_SIZE, fmt.IMAGE_SIZE, fmt.CHANNELS), dtype=np.uint8)
        for i, (row, data) in enumerate(zip(rows.tolist(), members)):
            hwc[i] = _decode_jpeg(split, row, data)
    return hwc


def _decode_jpeg(split: Split, row: int, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    except (OSError, SyntaxError, ValueError) as err:
        raise LoaderError(f"{split.shards[split.shard_index[row]]}: member {member_name(split, row)} is not a "
                          f"decodable JPEG ({err})") from None
    if pixels.shape != (fmt.IMAGE_SIZE, fmt.IMAGE_SIZE, fmt.CHANNELS):
        raise LoaderError(f"{split.shards[split.shard_index[row]]}: member {member_name(split, row)} decodes to "
                          f"{pixels.shape}, expected 64x64x3")
    return pixels


def first_images(split_dir: Path | str, count: int) -> torch.Tensor:
    """The first `count` images of a split (manifest order) as uint8 [N, 3, 64, 64], reading only their members
    (figures and evaluation subsets need a fixed handful, not the whole split decoded)."""
    split = open_checked(split_dir)
    rows = np.arange(min(count, len(split)))
    return nchw(decode_members(split, rows, [data for _, data in read_members(split, rows)]))
