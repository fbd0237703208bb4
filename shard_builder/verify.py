"""`build-shards --verify`: re-read every shard and check it against the manifest, the index and dataset.json.

With the source root given, every member is also re-derived from its source image and compared byte for
byte, which proves the shards hold exactly what the builder promises (same crop, resize and encoding).
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shard_builder import format as fmt
from shard_builder.build import BuildOptions, encode_member, preprocess
from shard_builder.layouts import ImageSource, find_layout
from shard_builder.parallel import run_parallel, tick
from shard_builder.read import BuildError, Split, index_text, open_split


class VerifyError(BuildError):
    pass


@dataclass
class ShardCheck:
    shard: Path
    keys: list[str]
    attributes: np.ndarray
    identities: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    encoding: str
    source: ImageSource | None
    options: BuildOptions | None


def _decode(data: bytes, encoding: str, shard: Path, name: str) -> np.ndarray:
    if encoding == "raw":
        return fmt.unpack_raw(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except OSError as err:
        raise VerifyError(f"{shard}: member {name} is not a decodable JPEG ({err})") from None
    return pixels


def check_shard(check: ShardCheck) -> int:
    shard, encoding = check.shard, check.encoding
    names, offsets, sizes = [], [], []
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for i, member in enumerate(tar):
                if i >= len(check.keys):
                    raise VerifyError(f"{shard}: holds more members than the manifest's {len(check.keys)}")
                expected = f"{check.keys[i]}.{encoding}"
                if member.name != expected:
                    raise VerifyError(f"{shard}: member {i} is {member.name!r}, manifest says {expected!r}")
                data = tar.extractfile(member).read()
                if member.offset_data != check.offsets[i] or member.size != check.sizes[i]:
                    raise VerifyError(f"{shard}: member {member.name} at offset {member.offset_data} size "
                                      f"{member.size}, manifest says {check.offsets[i]} / {check.sizes[i]}")
                attributes, identity = fmt.labels_from_member(data, encoding)
                if not np.array_equal(attributes, check.attributes[i]) or identity != check.identities[i]:
                    raise VerifyError(f"{shard}: labels of {member.name} differ from the manifest")
                pixels = _decode(data, encoding, shard, member.name)
                if pixels.shape != (fmt.IMAGE_SIZE, fmt.IMAGE_SIZE, fmt.CHANNELS):
                    raise VerifyError(f"{shard}: {member.name} decodes to {pixels.shape}, expected 64x64x3")
                if check.source is not None:
                    image = f"{check.keys[i]}.jpg"
                    rebuilt = encode_member(preprocess(check.source, image, fmt.CROPS[check.options.crop]),
                                            fmt.pack_labels(attributes, identity), check.options)
                    if rebuilt != data:
                        raise VerifyError(f"{shard}: {member.name} differs from a fresh build of "
                                          f"{check.source.location(image)}")
                names.append(check.keys[i])
                offsets.append(member.offset_data)
                sizes.append(member.size)
                tick()
    except tarfile.TarError as err:
        raise VerifyError(f"{shard}: not a readable tar file ({err})") from None
    if len(names) != len(check.keys):
        raise VerifyError(f"{shard}: holds {len(names)} members, manifest says {len(check.keys)} (truncated?)")
    index = shard.with_suffix(".idx")
    if index.read_text() != index_text(encoding, names, offsets, sizes):
        raise VerifyError(f"{index}: DALI index does not match the shard's members")
    return len(names)


def verify(out: Path, root: Path | None = None, workers: int = 1, progress=None) -> dict[str, int]:
    """Check every split of a build; returns the number of samples checked per split."""
    out = Path(out)
    splits: list[Split] = [open_split(out / name) for name in fmt.SPLITS]
    dataset = splits[0].dataset
    options = source = None
    if root is not None:
        options = BuildOptions(encoding=dataset["encoding"], jpeg_quality=dataset["jpeg_quality"] or 95,
                               crop=dataset["crop"]["name"])
        source = find_layout(root).images
    checks = []
    for split in splits:
        stray = sorted(p.name for p in split.path.iterdir() if p.name.endswith(".partial"))
        if stray:
            raise VerifyError(f"{split.path}: unfinished files from an interrupted build: {', '.join(stray[:3])}")
        for number, shard in enumerate(split.shards):
            rows = np.flatnonzero(split.shard_index == number)
            rows = rows[np.argsort(split.position[rows])]
            checks.append(ShardCheck(shard, split.keys[rows].tolist(), split.attributes[rows], split.identities[rows],
                                     split.offset[rows], split.size[rows], split.encoding, source, options))
    total = sum(len(split) for split in splits)
    run_parallel(check_shard, checks, total, workers, progress)
    return {split.name: len(split) for split in splits}
