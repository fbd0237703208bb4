"""CelebA (any layout of `layouts`) -> 64x64 uint8 WebDataset shards, a DALI index per shard, a Parquet manifest.

Work is parallel over shards: each worker preprocesses its images and streams them straight into its own
`.tar.partial`, renamed into place only when complete, so memory stays at one image per worker and an
interrupted build never leaves a shard that looks finished. `dataset.json` is written last and is the
marker of a complete build; a build that cannot write (a full disk) removes what it wrote. Output bytes
depend only on the input and the flags (fixed tar metadata, seeded order), never on the number of workers.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from shard_builder import format as fmt
from shard_builder.annotations import CelebaAnnotations, read_annotations
from shard_builder.layouts import ImageSource, UnreadableImage, find_layout
from shard_builder.parallel import run_parallel, tick
from shard_builder.read import DATASET_JSON, MANIFEST, BuildError, index_text, member_tar_info

BUILDER_VERSION = "1.0"
SOURCE_SIZE = (178, 218)  # aligned CelebA, width x height


class BadImageError(BuildError):
    """One image cannot be used (missing, corrupt, wrong mode or size); skippable with --skip-bad."""


@dataclass(frozen=True)
class BuildOptions:
    encoding: str = "raw"
    jpeg_quality: int = 95
    crop: str = "center"
    samples_per_shard: int = 2000
    seed: int = 0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.encoding not in fmt.ENCODINGS:
            raise BuildError(f"unknown encoding {self.encoding!r}; choose one of {', '.join(fmt.ENCODINGS)}")
        if self.crop not in fmt.CROPS:
            raise BuildError(f"unknown crop {self.crop!r}; choose one of {', '.join(fmt.CROPS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise BuildError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")
        if self.samples_per_shard < 1:
            raise BuildError(f"samples per shard must be >= 1, got {self.samples_per_shard}")


def preprocess(images: ImageSource, name: str, crop: fmt.Crop) -> np.ndarray:
    """Aligned CelebA JPEG -> 64x64x3 uint8: crop, then area (box) resize, which antialiases the 2.8x shrink."""
    path = images.location(name)  # a file, or a zip and its member
    try:
        data = images.read(name)
    except FileNotFoundError:
        raise BadImageError(f"{path}: image listed in the annotations is missing") from None
    except UnreadableImage as err:
        raise BadImageError(f"{path}: {err}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{path}: cannot decode image ({err})") from None
    if image.mode != "RGB":
        raise BadImageError(f"{path}: image mode is {image.mode}, expected RGB")
    if image.size != SOURCE_SIZE:
        raise BadImageError(f"{path}: image is {image.size[0]}x{image.size[1]}, expected aligned CelebA "
                            f"{SOURCE_SIZE[0]}x{SOURCE_SIZE[1]}")
    box = crop.box_for(*image.size)
    resized = image.resize((fmt.IMAGE_SIZE, fmt.IMAGE_SIZE), Image.Resampling.BOX, box=box)
    return np.asarray(resized, dtype=np.uint8)


def encode_member(pixels: np.ndarray, labels: bytes, options: BuildOptions) -> bytes:
    if options.encoding == "raw":
        return fmt.pack_raw(pixels, labels)
    buffer = io.BytesIO()
    # 4:4:4 because chroma subsampling visibly smears 64x64 faces; baseline (not progressive) for nvJPEG's
    # hardware decoder.
    Image.fromarray(pixels).save(buffer, "JPEG", quality=options.jpeg_quality, subsampling=0)
    return fmt.insert_jpeg_labels(buffer.getvalue(), labels)


@dataclass
class ShardTask:
    images: ImageSource
    path: Path
    files: list[str]
    attributes: np.ndarray
    identities: np.ndarray
    options: BuildOptions


@dataclass
class ShardResult:
    path: Path
    keys: list[str]
    offsets: list[int]
    sizes: list[int]
    kept: np.ndarray  # indices into the task's files that were written
    bad: list[dict]


def write_shard(task: ShardTask) -> ShardResult:
    partial = task.path.with_name(task.path.name + ".partial")
    try:
        result = _write_members(task, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    write_index(task.path.with_suffix(".idx"), task.options.encoding, result.keys, result.offsets, result.sizes)
    os.replace(partial, task.path)
    return result


def _write_members(task: ShardTask, partial: Path) -> ShardResult:
    crop = fmt.CROPS[task.options.crop]
    result = ShardResult(task.path, [], [], [], np.empty(0, dtype=np.int64), [])
    kept = []
    with open(partial, "wb") as stream, tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, name in enumerate(task.files):
            try:
                pixels = preprocess(task.images, name, crop)
            except BadImageError as err:
                if not task.options.skip_bad:
                    raise
                result.bad.append({"file": name, "reason": str(err).split(": ", 1)[1]})
                tick()
                continue
            key = Path(name).stem
            data = encode_member(pixels, fmt.pack_labels(task.attributes[i], int(task.identities[i])), task.options)
            header_at = stream.tell()
            tar.addfile(member_tar_info(f"{key}.{task.options.encoding}", len(data)), io.BytesIO(data))
            result.keys.append(key)
            result.offsets.append(header_at + tarfile.BLOCKSIZE)
            result.sizes.append(len(data))
            kept.append(i)
            tick()
    if not kept:
        raise BuildError(f"{task.path}: every image of this shard was bad; nothing to write")
    result.kept = np.array(kept, dtype=np.int64)
    return result


def write_index(path: Path, encoding: str, keys: list[str], offsets: list[int], sizes: list[int]) -> None:
    _atomic_write(path, index_text(encoding, keys, offsets, sizes).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def plan_shards(count: int, samples_per_shard: int) -> list[np.ndarray]:
    """Split positions 0..count-1 into equal shards (sizes differ by at most one)."""
    num_shards = max(1, -(-count // samples_per_shard))
    return np.array_split(np.arange(count), num_shards)


def _split_order(annotations: CelebaAnnotations, split: str, seed: int) -> np.ndarray:
    """Deterministic shuffle within a split: DALI's reader expects pre-shuffled shards."""
    indices = annotations.indices(split)
    split_seed = seed * 1000 + fmt.SPLITS.index(split)
    return indices[np.random.default_rng(split_seed).permutation(len(indices))]


def _manifest_table(annotations: CelebaAnnotations, split: str, results: list[tuple[ShardResult, np.ndarray]]) -> pa.Table:
    rows = {"key": [], "shard": [], "position": [], "offset": [], "size": [], "source": []}
    for result, source_indices in results:
        rows["key"] += result.keys
        rows["shard"] += [result.path.name] * len(result.keys)
        rows["position"] += range(len(result.keys))
        rows["offset"] += result.offsets
        rows["size"] += result.sizes
        rows["source"] += source_indices[result.kept].tolist()
    source = np.array(rows.pop("source"), dtype=np.int64)
    attributes = annotations.attributes[source]
    return pa.table({
        "key": pa.array(rows["key"], pa.string()),
        "shard": pa.array(rows["shard"], pa.string()),
        "position": pa.array(rows["position"], pa.int32()),
        "offset": pa.array(rows["offset"], pa.int64()),
        "size": pa.array(rows["size"], pa.int32()),
        "attributes": pa.FixedSizeListArray.from_arrays(pa.array(attributes.reshape(-1), pa.uint8()),
                                                        fmt.NUM_ATTRIBUTES),
        "identity": pa.array(annotations.identities[source], pa.int64()),
        "split": pa.array([split] * len(source), pa.string()),
    })


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise BuildError(f"{out}: output folder is not empty; choose a new folder or remove this one "
                         f"(nothing was overwritten)")


@dataclass
class BuildSummary:
    out: Path
    dataset: dict
    seconds: float
    bytes_per_split: dict[str, int]


def build(root: Path, out: Path, options: BuildOptions, progress=None) -> BuildSummary:
    """Build all three splits. `progress(done, total)` is called as images complete.

    An OSError (a full disk, a read-only folder) leaves `out` as it was found, so the same command can be re-run.
    """
    out = Path(out)
    _check_output_dir(out)
    new = _outermost_missing(out)
    try:
        return _build(root, out, options, progress)
    except OSError as err:
        if new is not None:
            shutil.rmtree(new, ignore_errors=True)
        else:  # `out` was empty: everything in it is this build's
            for child in out.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        raise BuildError(f"{out}: build failed ({err}); removed what it had written") from None


def _outermost_missing(out: Path) -> Path | None:
    """The outermost of `out` and its parents that does not exist yet (None if `out` exists)."""
    missing = None
    for folder in (out, *out.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _build(root: Path, out: Path, options: BuildOptions, progress) -> BuildSummary:
    layout = find_layout(root)
    annotations = read_annotations(layout.attributes, layout.partitions, layout.identities)
    started = time.perf_counter()
    plans: dict[str, list[tuple[ShardTask, np.ndarray]]] = {}  # split -> (task, source indices) per shard
    for split in fmt.SPLITS:
        order = _split_order(annotations, split, options.seed)
        if len(order) == 0:
            raise BuildError(f"{layout.partitions}: split {split!r} has no images")
        plans[split] = []
        for i, positions in enumerate(plan_shards(len(order), options.samples_per_shard)):
            source = order[positions]
            task = ShardTask(layout.images, out / split / fmt.shard_name(split, i),
                             [annotations.files[j] for j in source], annotations.attributes[source],
                             annotations.identities[source], options)
            plans[split].append((task, source))
        (out / split).mkdir(parents=True, exist_ok=True)
    tasks = [task for split in fmt.SPLITS for task, _ in plans[split]]
    try:
        results = run_parallel(write_shard, tasks, len(annotations.files), options.workers, progress)
    except BaseException:
        # Workers killed mid-shard cannot clean up after themselves.
        for partial in out.rglob("*.partial"):
            partial.unlink()
        raise
    by_path = {result.path: result for result in results}
    counts, shards, bad, sizes = {}, {}, [], {}
    for split in fmt.SPLITS:
        pairs = [(by_path[task.path], source) for task, source in plans[split]]
        table = _manifest_table(annotations, split, pairs)
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        _atomic_write(out / split / MANIFEST, buffer.getvalue().to_pybytes())
        counts[split] = table.num_rows
        shards[split] = [result.path.name for result, _ in pairs]
        bad += [dict(entry, split=split) for result, _ in pairs for entry in result.bad]
        sizes[split] = sum(result.path.stat().st_size for result, _ in pairs)
    crop = fmt.CROPS[options.crop]
    dataset = {
        "format": fmt.FORMAT_NAME,
        "format_version": fmt.FORMAT_VERSION,
        "builder_version": BUILDER_VERSION,
        "image_size": fmt.IMAGE_SIZE,
        "channels": fmt.CHANNELS,
        "layout": "HWC",
        "encoding": options.encoding,
        "jpeg_quality": options.jpeg_quality if options.encoding == "jpg" else None,
        "label_bytes": fmt.LABEL_BYTES,
        "label_offset": fmt.LABEL_OFFSET[options.encoding],
        "crop": {"name": crop.name, "box": list(crop.box_for(*SOURCE_SIZE))},
        "resample": "box",
        "seed": options.seed,
        "samples_per_shard": options.samples_per_shard,
        "attribute_names": annotations.attribute_names,
        "counts": counts,
        "shards": shards,
        "skipped": bad,
        "source": layout.describe(),
    }
    _atomic_write(out / DATASET_JSON, (json.dumps(dataset, indent=2) + "\n").encode())
    return BuildSummary(out, dataset, time.perf_counter() - started, sizes)
