"""Loaders: the batch contract, exactly-once / disjoint epochs over 1-3 ranks, equal batch counts, content
against an independent read of the tars, seeded order, mid-epoch resume, a real 2-process torchrun, bad input.

Every loader kind runs the same tests on the CPU (the DALI pipeline CPU-only, as in CI).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from loaders import LOADER_KINDS, LoaderError, make_loader
from shard_builder import format as fmt
from shard_builder.build import write_index
from shard_builder.read import open_split

REPO = Path(__file__).resolve().parents[1]
KINDS = pytest.mark.parametrize("kind", LOADER_KINDS)


# ----------------------------------------------------------------------------- helpers


def loaders(kind: str, split_dir: Path, world: int = 1, batch_size: int = 11, *, seed: int = 0, shuffle: bool,
            drop_last: bool, num_workers: int = 2) -> list:
    """One loader per simulated rank."""
    return [make_loader(kind, split_dir, batch_size, torch.device("cpu"), rank=rank, world_size=world, seed=seed,
                        shuffle=shuffle, drop_last=drop_last, num_workers=num_workers) for rank in range(world)]


def run_epoch(loader, epoch: int = 0, start_batch: int = 0) -> list[dict]:
    """One epoch (or its tail) as plain CPU arrays, the batch contract checked on the way."""
    loader.set_epoch(epoch, start_batch)
    batches = []
    for batch in loader:
        size = loader.batch_size
        assert batch.images.shape == (size, 3, 64, 64) and batch.images.dtype == torch.uint8
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        assert batch.attributes.shape == (size, 40) and batch.attributes.dtype == torch.uint8
        assert batch.identities.shape == (size,) and batch.identities.dtype == torch.int64
        assert batch.mask.shape == (size,) and batch.mask.dtype == torch.bool and len(batch) == size
        assert batch.images.device == loader.device == batch.mask.device
        batches.append({"keys": list(batch.keys), "mask": batch.mask.numpy(), "images": batch.images.numpy(),
                        "attributes": batch.attributes.numpy(), "identities": batch.identities.numpy()})
    assert len(batches) == len(loader) - start_batch
    return batches


def real_keys(batches: list[dict]) -> list[str]:
    return [key for batch in batches for key, real in zip(batch["keys"], batch["mask"]) if real]


def all_keys(batches: list[dict]) -> list[str]:
    return [key for batch in batches for key in batch["keys"]]


@lru_cache(maxsize=None)
def reference(split_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """key -> (CHW pixels, attributes, identity), read with tarfile + PIL, independently of the loaders."""
    samples = {}
    for shard in sorted(split_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, encoding = member.name.split(".")
                data = tar.extractfile(member).read()
                attributes, identity = fmt.labels_from_member(data, encoding)
                pixels = fmt.unpack_raw(data) if encoding == "raw" else np.asarray(Image.open(io.BytesIO(data)))
                samples[key] = (pixels.transpose(2, 0, 1), attributes, identity)
    return samples


def check_content(split_dir: Path, batches: list[dict], pixel_tolerance: int = 0) -> None:
    """Images equal the members' pixels; labels equal the manifest (and the members' label blocks)."""
    split, expected = open_split(split_dir), reference(split_dir)
    row_of = {key: row for row, key in enumerate(split.keys.tolist())}
    for batch in batches:
        for i, key in enumerate(batch["keys"]):
            pixels, attributes, identity = expected[key]
            diff = np.abs(batch["images"][i].astype(np.int16) - pixels).max()
            assert diff <= pixel_tolerance, (key, diff)
            assert (batch["attributes"][i] == split.attributes[row_of[key]]).all()
            assert (batch["attributes"][i] == attributes).all()
            assert batch["identities"][i] == split.identities[row_of[key]] == identity


def assert_exactly_once(split_dir: Path, per_rank: list[list[dict]]) -> None:
    assert len({len(batches) for batches in per_rank}) == 1, "ranks got different batch counts"
    seen = Counter(key for batches in per_rank for key in real_keys(batches))
    assert seen == Counter(open_split(split_dir).keys.tolist())


def rewrite_shard(split_dir: Path, shard_name: str, transform) -> None:
    """Rewrite one shard member by member (`transform(name, data) -> (name, data)`), keeping its DALI index and
    the manifest consistent with it, as a build of another format would be."""
    shard = split_dir / shard_name
    with tarfile.open(shard) as tar:
        members = [transform(m.name, tar.extractfile(m).read()) for m in tar]
    offsets = []
    with open(shard, "wb") as stream, tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            offsets.append(stream.tell() + tarfile.BLOCKSIZE)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    names = [name for name, _ in members]
    sizes = [len(data) for _, data in members]
    write_index(shard.with_suffix(".idx"), names[0].split(".")[1], [n.split(".")[0] for n in names], offsets, sizes)
    table = pq.read_table(split_dir / "manifest.parquet")
    rows = np.flatnonzero(np.array(table.column("shard").to_pylist()) == shard_name)
    offset, size = table.column("offset").to_numpy().copy(), table.column("size").to_numpy().copy()
    offset[rows], size[rows] = offsets, sizes
    table = table.set_column(table.schema.get_field_index("offset"), "offset", pa.array(offset, pa.int64()))
    table = table.set_column(table.schema.get_field_index("size"), "size", pa.array(size, pa.int32()))
    pq.write_table(table, split_dir / "manifest.parquet")


@pytest.fixture
def damaged(synthetic_shards, tmp_path) -> Path:
    """A private copy of the synthetic raw build that a test may damage."""
    return Path(shutil.copytree(synthetic_shards, tmp_path / "shards"))


# ----------------------------------------------------------------------------- epochs across ranks


@KINDS
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True], ids=["evaluation", "training"])
def test_padded_epochs_visit_every_sample_exactly_once(kind, world, shuffle, synthetic_shards):
    # 11 does not divide the split: padding; with 3 ranks DALI's shards differ by one sample and one rank needs
    # an extra, fully masked batch to keep the counts equal.
    split_dir = synthetic_shards / "train"
    ranks = loaders(kind, split_dir, world, shuffle=shuffle, drop_last=False)
    per_rank = [run_epoch(loader, epoch=2) for loader in ranks]
    assert_exactly_once(split_dir, per_rank)
    assert len(per_rank[0]) == -(-len(open_split(split_dir)) // (11 * world))
    for batches in per_rank:
        check_content(split_dir, batches)


@KINDS
def test_more_workers_than_batches(kind, synthetic_shards):
    split_dir = synthetic_shards / "valid"
    batch_size = len(open_split(split_dir))  # one batch per rank: one of each rank's 2 workers has no work
    per_rank = [run_epoch(loader) for loader in loaders(kind, split_dir, 2, batch_size, shuffle=False, drop_last=False)]
    assert len(per_rank[0]) == 1
    assert_exactly_once(split_dir, per_rank)


@KINDS
@pytest.mark.parametrize("world", [1, 2])
def test_training_epochs_are_full_disjoint_and_seeded(kind, world, synthetic_shards):
    split_dir = synthetic_shards / "train"
    ranks = loaders(kind, split_dir, world, shuffle=True, drop_last=True)
    first = [run_epoch(loader, epoch=0) for loader in ranks]
    size = len(open_split(split_dir))
    assert all(len(batches) == size // (11 * world) for batches in first)
    keys = [all_keys(batches) for batches in first]
    assert all(batch["mask"].all() for batches in first for batch in batches)
    assert len(set().union(*keys)) == sum(map(len, keys))  # disjoint across ranks, no repeats within
    check_content(split_dir, first[0])
    fresh = loaders(kind, split_dir, world, shuffle=True, drop_last=True)
    again = [all_keys(run_epoch(loader, epoch=0)) for loader in fresh]
    assert again == keys  # the same seed and epoch give the same order, from fresh loaders
    assert [all_keys(run_epoch(loader, epoch=1)) for loader in ranks] != keys
    other_seed = loaders(kind, split_dir, world, seed=1, shuffle=True, drop_last=True)
    assert [all_keys(run_epoch(loader, epoch=0)) for loader in other_seed] != keys


@KINDS
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_equals_the_rest_of_the_epoch(kind, workers, synthetic_shards):
    # Rank 1 of 2 with padding; odd starts make the webdataset loader's 2 workers change roles.
    (loader,) = loaders(kind, synthetic_shards / "train", 2, shuffle=True, drop_last=False, num_workers=workers)[1:]
    full = run_epoch(loader, epoch=3)
    for start in (1, 4, len(full) - 1, len(full)):
        tail = run_epoch(loader, epoch=3, start_batch=start)
        assert [b["keys"] for b in tail] == [b["keys"] for b in full[start:]]
        for resumed, uninterrupted in zip(tail, full[start:]):
            assert (resumed["mask"] == uninterrupted["mask"]).all()
            assert (resumed["images"] == uninterrupted["images"]).all()
    with pytest.raises(ValueError, match="start_batch"):
        loader.set_epoch(0, len(full) + 1)


@KINDS
def test_jpeg_shards(kind, synthetic_jpg_shards):
    split_dir = synthetic_jpg_shards / "valid"
    per_rank = [run_epoch(loader) for loader in loaders(kind, split_dir, 2, 4, shuffle=False, drop_last=False)]
    assert_exactly_once(split_dir, per_rank)
    for batches in per_rank:  # DALI's decoder may round a few pixels differently from PIL's
        check_content(split_dir, batches, pixel_tolerance=0 if kind != "dali" else 4)


@pytest.mark.slow
@KINDS
def test_real_sample_two_ranks(kind, sample_shards):
    split_dir = sample_shards / "valid"
    per_rank = [run_epoch(loader) for loader in loaders(kind, split_dir, 2, 128, shuffle=False, drop_last=False)]
    assert_exactly_once(split_dir, per_rank)
    for batches in per_rank:
        check_content(split_dir, batches)


@pytest.mark.slow
def test_two_processes_with_torchrun(synthetic_shards, tmp_path):
    split_dir = synthetic_shards / "valid"
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
               "-m", "loaders.probe", "--split", str(split_dir), "--out", str(tmp_path), "--batch-size", "3"]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", PYTHONPATH=str(REPO))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in LOADER_KINDS:
        records = [json.loads((tmp_path / f"{kind}-rank{rank}.json").read_text()) for rank in range(2)]
        assert [r["world_size"] for r in records] == [2, 2]
        assert records[0]["batches"] == records[1]["batches"] == records[0]["len"] == records[1]["len"]
        seen = Counter(key for record in records for key in record["keys"])
        assert seen == Counter(open_split(split_dir).keys.tolist()), kind


def test_factory_rejects_unknown_kinds_and_impossible_batches(synthetic_shards):
    with pytest.raises(ValueError, match="unknown loader"):
        make_loader("ffcv", synthetic_shards / "valid", 4, "cpu", shuffle=False, drop_last=False)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        make_loader("resident", synthetic_shards / "valid", 1000, "cpu", shuffle=True, drop_last=True)


# ----------------------------------------------------------------------------- bad input


def _make(kind: str, split_dir: Path):
    return make_loader(kind, split_dir, 8, "cpu", shuffle=False, drop_last=False, num_workers=1)


@KINDS
def test_missing_split_folder(kind, tmp_path):
    with pytest.raises(LoaderError, match=f"{tmp_path / 'nowhere' / 'train'}: split folder does not exist"):
        _make(kind, tmp_path / "nowhere" / "train")


@KINDS
def test_missing_index(kind, damaged):
    (damaged / "train" / "train-000001.idx").unlink()
    with pytest.raises(LoaderError, match=r"train-000001\.idx: DALI index is missing"):
        _make(kind, damaged / "train")


@KINDS
def test_truncated_shard(kind, damaged):
    shard = damaged / "train" / "train-000002.tar"
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(LoaderError, match=rf"{shard}: truncated: [\d,]+ bytes, but its last member \d+\.raw ends"):
        _make(kind, damaged / "train")


@KINDS
def test_corrupt_shard(kind, damaged):
    split = open_split(damaged / "train")
    row = np.flatnonzero((split.shard_index == 1) & (split.position == 5))[0]
    with open(split.shards[1], "r+b") as stream:  # scribble over member 5's tar header and label block
        stream.seek(int(split.offset[row]) - 512)
        stream.write(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())
    with pytest.raises(LoaderError, match=rf"{split.shards[1]}: .*\(corrupt shard or one from another build\)$"):
        run_epoch(_make(kind, damaged / "train"))


@KINDS
def test_jpeg_shard_in_a_raw_build(kind, damaged, synthetic_jpg_shards):
    shard = damaged / "valid" / "valid-000000.tar"
    shutil.copy(synthetic_jpg_shards / "valid" / shard.name, shard)
    with pytest.raises(LoaderError, match=rf"{shard}: member '\d+\.jpg' at byte 0, but .*dataset.json says encoding "
                                          r"'raw' \(shard built with another format\?\)"):
        _make(kind, damaged / "valid")
    shutil.copy(synthetic_jpg_shards / "valid" / shard.with_suffix(".idx").name, shard.with_suffix(".idx"))
    with pytest.raises(LoaderError, match=rf"{shard.with_suffix('.idx')}: indexes jpg members, but .*dataset.json "
                                          r"says encoding 'raw'"):
        _make(kind, damaged / "valid")


@KINDS
def test_members_of_the_wrong_size(kind, damaged):
    # A consistent build (tar, index, manifest) of 32x32 raw members, where dataset.json says 64x64.
    rewrite_shard(damaged / "valid", "valid-000001.tar", lambda name, data: (name, data[:fmt.LABEL_BYTES + 32 * 32 * 3]))
    with pytest.raises(LoaderError, match=r"valid-000001\.tar: member \d+\.raw is 3116 bytes, but a raw 64x64 "
                                          r"member is 12332 \(built with another format than .*dataset.json says\?\)"):
        _make(kind, damaged / "valid")


def test_bench_names_the_bad_file_and_exits_1(tmp_path, capsys):
    from loaders.bench import main

    assert main(["--shards", str(tmp_path / "missing"), "--json", str(tmp_path / "out.json")]) == 1
    assert f"{tmp_path / 'missing'}" in capsys.readouterr().err


@pytest.mark.parametrize("shards", ["synthetic_shards", "synthetic_jpg_shards"])
def test_dali_gpu_pipeline_is_defined_and_asks_for_cuda(shards, request):
    """No GPU here: the CUDA branch of the DALI pipeline (raw members copied to the GPU whole, JPEG members
    decoded by nvJPEG in `mixed`) is still defined, so DALI checks every operator and argument; only the build
    needs CUDA."""
    from loaders.dali import DaliLoader

    loader = make_loader("dali", request.getfixturevalue(shards) / "train", 8, "cpu", shuffle=True, drop_last=True)
    assert isinstance(loader, DaliLoader)
    loader.gpu, loader.device_id = True, 0  # what a CUDA device would have set
    pipe = loader.define_pipeline(0)
    with pytest.raises(RuntimeError, match="CUDA"):
        pipe.build()
