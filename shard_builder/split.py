"""Open one built split (`OUT/<split>/`): its manifest, shard paths and labels, checked against dataset.json.

This is the read side of the format that every loader, `verify`, eval and edit go through, so a missing
split folder, manifest or index, or a build of another format, is reported the same way everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from shard_builder import format as fmt
from shard_builder.build import MANIFEST, BuildError, load_dataset_json


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
        raise BuildError(f"{path}: {path.parent / 'dataset.json'} lists no split named {name!r}")
    if dataset.get("encoding") not in fmt.ENCODINGS:
        raise BuildError(f"{path.parent / 'dataset.json'}: unknown encoding {dataset.get('encoding')!r}")
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
