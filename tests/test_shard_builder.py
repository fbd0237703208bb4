"""build-shards: layout, content against independent computations, determinism, DALI index, bad input."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shard_builder import format as fmt
from shard_builder.annotations import AnnotationError
from shard_builder.build import BuildOptions, build
from shard_builder.cli import main as build_shards
from shard_builder.read import BuildError, open_split
from shard_builder.verify import VerifyError, verify


def _annotation_table(root: Path) -> dict[str, tuple[list[int], int, int]]:
    """Independent parse of the three files: file -> (attributes in {0,1}, identity, partition code)."""
    attr_lines = (root / "list_attr_celeba.txt").read_text().splitlines()[2:]
    identity = dict(line.split() for line in (root / "identity_CelebA.txt").read_text().splitlines())
    partition = dict(line.split() for line in (root / "list_eval_partition.txt").read_text().splitlines())
    table = {}
    for line in attr_lines:
        name, *values = line.split()
        table[name] = ([int(v == "1") for v in values], int(identity[name]), int(partition[name]))
    return table


def _members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def _tree_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_layout_counts_and_equal_shards(synthetic_root, synthetic_shards):
    dataset = json.loads((synthetic_shards / "dataset.json").read_text())
    table = _annotation_table(synthetic_root)
    for code, split in fmt.PARTITION_CODES.items():
        expected = sorted(Path(n).stem for n, (_, _, c) in table.items() if c == code)
        assert dataset["counts"][split] == len(expected)
        folder = synthetic_shards / split
        sizes = []
        keys = []
        for shard in dataset["shards"][split]:
            members = _members(folder / shard)
            sizes.append(len(members))
            keys += [name.split(".")[0] for name, _ in members]
            assert (folder / shard).with_suffix(".idx").is_file()
        assert sorted(keys) == expected  # every image exactly once
        assert max(sizes) - min(sizes) <= 1 and max(sizes) <= 16
        assert keys != sorted(keys)  # shuffled within the split
    assert dataset["encoding"] == "raw" and dataset["image_size"] == 64
    assert dataset["crop"] == {"name": "center", "box": [0, 20, 178, 198]}
    assert len(dataset["attribute_names"]) == 40 and dataset["attribute_names"][15] == "Eyeglasses"


def test_members_hold_the_annotated_labels_and_the_cropped_image(synthetic_root, synthetic_shards):
    table = _annotation_table(synthetic_root)
    split = open_split(synthetic_shards / "valid")
    for shard_number, shard in enumerate(split.shards):
        for position, (name, data) in enumerate(_members(shard)):
            key = name.split(".")[0]
            attributes, identity = fmt.labels_from_member(data, "raw")
            assert attributes.tolist() == table[f"{key}.jpg"][0] and identity == table[f"{key}.jpg"][1]
            row = np.flatnonzero(split.keys == key)[0]
            assert split.shard_index[row] == shard_number and split.position[row] == position
            assert split.attributes[row].tolist() == attributes.tolist() and split.identities[row] == identity
    # Pixels: the central 178x178 square, area-resized (computed here with PIL directly).
    key = split.keys[0]
    expected = Image.open(synthetic_root / "img_align_celeba" / f"{key}.jpg").crop((0, 20, 178, 198))
    expected = np.asarray(expected.resize((64, 64), Image.Resampling.BOX))
    data = dict(_members(split.shards[split.shard_index[0]]))[f"{key}.raw"]
    np.testing.assert_array_equal(fmt.unpack_raw(data), expected)


def test_same_field_of_view_as_the_seeds_torchvision_transform(synthetic_root, synthetic_shards):
    from torchvision import transforms

    seeds = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64)])
    split = open_split(synthetic_shards / "test")
    data = dict(_members(split.shards[0]))
    for name, member in list(data.items())[:5]:
        reference = np.asarray(seeds(Image.open(synthetic_root / "img_align_celeba" / f"{name[:-4]}.jpg")))
        ours = fmt.unpack_raw(member).astype(np.float64)
        assert np.abs(ours - reference).mean() < 6  # same crop; only the resampling filter differs


def test_dali_index_matches_wds2idx(synthetic_shards, tmp_path):
    wds2idx = shutil.which("wds2idx") or str(Path(__import__("sys").executable).parent / "wds2idx")
    if not Path(wds2idx).exists():
        pytest.skip("DALI's wds2idx is not installed")
    shard = open_split(synthetic_shards / "train").shards[1]
    subprocess.run([wds2idx, str(shard), str(tmp_path / "ref.idx")], check=True, capture_output=True)
    assert (tmp_path / "ref.idx").read_text() == shard.with_suffix(".idx").read_text()


def test_byte_identical_whatever_the_worker_count(synthetic_root, synthetic_shards, tmp_path):
    out = tmp_path / "again"
    build(synthetic_root, out, BuildOptions(samples_per_shard=16, workers=1))
    assert _tree_bytes(out) == _tree_bytes(synthetic_shards)


def test_verify_accepts_a_good_build_and_catches_damage(synthetic_root, synthetic_shards, tmp_path):
    assert verify(synthetic_shards, synthetic_root, workers=2) == json.loads(
        (synthetic_shards / "dataset.json").read_text())["counts"]
    out = tmp_path / "damaged"
    shutil.copytree(synthetic_shards, out)
    shard = out / "valid" / "valid-000000.tar"
    raw = bytearray(shard.read_bytes())
    raw[512 + 44 + 100] ^= 0xFF  # flip one pixel of the first member
    shard.write_bytes(bytes(raw))
    with pytest.raises(VerifyError, match=r"valid-000000.tar: .* differs from a fresh build"):
        verify(out, synthetic_root)
    shard.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(VerifyError, match="valid-000000.tar"):
        verify(out)


def test_jpeg_members_are_valid_jpegs_with_labels_at_offset_24(synthetic_root, tmp_path):
    raw_out, jpg_out = tmp_path / "raw", tmp_path / "jpg"
    build(synthetic_root, raw_out, BuildOptions(workers=1))
    build(synthetic_root, jpg_out, BuildOptions(encoding="jpg", jpeg_quality=95, workers=1))
    assert json.loads((jpg_out / "dataset.json").read_text())["jpeg_quality"] == 95
    raw = dict(_members(raw_out / "test" / "test-000000.tar"))
    for name, data in _members(jpg_out / "test" / "test-000000.tar"):
        assert data[:2] == b"\xff\xd8" and data[24 - 4:24 - 2] == b"\xff\xfe"
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)
        exact = fmt.unpack_raw(raw[name[:-4] + ".raw"]).astype(np.float64)
        psnr = 10 * np.log10(255**2 / np.mean((pixels - exact) ** 2))
        assert psnr > 33, f"{name}: PSNR {psnr:.1f} dB"
        assert fmt.labels_from_member(data, "jpg")[0].tolist() == fmt.labels_from_member(
            raw[name[:-4] + ".raw"], "raw")[0].tolist()
    assert verify(jpg_out, synthetic_root)["test"] > 0


def test_nvae_crop_is_selectable_and_recorded(synthetic_root, tmp_path):
    build(synthetic_root, tmp_path / "out", BuildOptions(crop="nvae148", workers=1))
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert dataset["crop"] == {"name": "nvae148", "box": [15, 40, 163, 188]}
    assert verify(tmp_path / "out", synthetic_root)["train"] == dataset["counts"]["train"]


def test_root_may_be_the_parent_folder(synthetic_root, tmp_path):
    build(synthetic_root.parent, tmp_path / "out", BuildOptions(workers=1))
    assert (tmp_path / "out" / "dataset.json").is_file()


# --- bad input: every case names the file and exits non-zero, and nothing looks complete -------------------

def _first_image(root: Path, split_code: int = 0) -> str:
    return next(n for n, (_, _, c) in _annotation_table(root).items() if c == split_code)


def _expect_cli_error(root: Path, out: Path, capsys, *patterns: str, extra: tuple[str, ...] = ()) -> str:
    assert build_shards(["--root", str(root), "--out", str(out), "--workers", "1", *extra]) == 1
    message = capsys.readouterr().err
    for pattern in patterns:
        assert pattern in message, message
    if out.exists():
        assert not (out / "dataset.json").exists()
        assert not list(out.rglob("*.partial"))
    return message


def test_missing_image(celeba_copy, tmp_path, capsys):
    name = _first_image(celeba_copy)
    (celeba_copy / "img_align_celeba" / name).unlink()
    _expect_cli_error(celeba_copy, tmp_path / "out", capsys, name, "missing")


def test_corrupt_jpeg(celeba_copy, tmp_path, capsys):
    name = _first_image(celeba_copy, 2)
    path = celeba_copy / "img_align_celeba" / name
    path.write_bytes(path.read_bytes()[:300])
    _expect_cli_error(celeba_copy, tmp_path / "out", capsys, name, "cannot decode")


def test_non_rgb_and_wrong_size_images(celeba_copy, tmp_path, capsys):
    name = _first_image(celeba_copy)
    path = celeba_copy / "img_align_celeba" / name
    Image.open(path).convert("L").save(path)
    _expect_cli_error(celeba_copy, tmp_path / "a", capsys, name, "mode is L, expected RGB")
    Image.new("RGB", (200, 200)).save(path)
    _expect_cli_error(celeba_copy, tmp_path / "b", capsys, name, "200x200", "178x218")


def test_skip_bad_records_the_image_and_builds_the_rest(celeba_copy, tmp_path):
    name = _first_image(celeba_copy)
    (celeba_copy / "img_align_celeba" / name).write_bytes(b"not a jpeg")
    assert build_shards(["--root", str(celeba_copy), "--out", str(tmp_path / "out"), "--skip-bad"]) == 0
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert [entry["file"] for entry in dataset["skipped"]] == [name]
    assert dataset["skipped"][0]["split"] == "train" and "cannot decode" in dataset["skipped"][0]["reason"]
    manifest = pq.read_table(tmp_path / "out" / "train" / "manifest.parquet")
    assert Path(name).stem not in manifest.column("key").to_pylist()
    assert verify(tmp_path / "out")["train"] == dataset["counts"]["train"]


def test_malformed_attribute_line_names_file_and_line(celeba_copy, tmp_path, capsys):
    path = celeba_copy / "list_attr_celeba.txt"
    lines = path.read_bytes().split(b"\r\n")
    lines[4] = lines[4].replace(b" 1", b" 0", 1) if b" 1" in lines[4] else lines[4].replace(b"-1", b"0", 1)
    path.write_bytes(b"\r\n".join(lines))
    _expect_cli_error(celeba_copy, tmp_path / "a", capsys, "list_attr_celeba.txt:5:", "is not 1 or -1")
    lines[4] = lines[4].rsplit(b" ", 1)[0]
    path.write_bytes(b"\r\n".join(lines))
    _expect_cli_error(celeba_copy, tmp_path / "b", capsys, "list_attr_celeba.txt:5:",
                      "expected a file name and 40 values, found 39 values")


def test_inconsistent_annotations(celeba_copy, tmp_path, capsys):
    path = celeba_copy / "identity_CelebA.txt"
    lines = path.read_bytes().split(b"\r\n")
    dropped = lines.pop(3).split()[0].decode()
    path.write_bytes(b"\r\n".join(lines))
    _expect_cli_error(celeba_copy, tmp_path / "out", capsys, "identity_CelebA.txt", "not listed", dropped)


def test_unknown_partition_code(celeba_copy, tmp_path, capsys):
    path = celeba_copy / "list_eval_partition.txt"
    lines = path.read_bytes().split(b"\r\n")
    lines[6] = lines[6].rsplit(b" ", 1)[0] + b" 7"
    path.write_bytes(b"\r\n".join(lines))
    _expect_cli_error(celeba_copy, tmp_path / "out", capsys, "list_eval_partition.txt:7:", "unknown partition code 7")


def test_count_line_disagreeing_with_rows(celeba_copy, tmp_path):
    path = celeba_copy / "list_attr_celeba.txt"
    text = path.read_bytes()
    path.write_bytes(b"99999" + text[text.index(b"\r\n"):])
    with pytest.raises(AnnotationError, match=r"list_attr_celeba.txt:1: count line says 99999"):
        build(celeba_copy, tmp_path / "out", BuildOptions(workers=1))


def test_output_folder_not_empty_is_refused_and_untouched(synthetic_root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("finished work")
    _expect_cli_error(synthetic_root, out, capsys, str(out), "not empty")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


def test_interrupted_build_leaves_nothing_that_looks_complete(celeba_copy, tmp_path):
    # A bad image in the test split: train and valid shards get written first, then the build stops.
    name = _first_image(celeba_copy, 2)
    (celeba_copy / "img_align_celeba" / name).write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=name):
        build(celeba_copy, out, BuildOptions(workers=1, samples_per_shard=16))
    assert not (out / "dataset.json").exists() and not list(out.rglob("*.partial"))
    assert not (out / "test" / "manifest.parquet").exists()
    with pytest.raises(BuildError, match="dataset.json: missing"):
        verify(out)


@pytest.mark.parametrize(("failing", "existed"), [("shard", False), ("dataset.json", True)])
def test_write_error_is_one_line_and_leaves_the_output_folder_as_found(synthetic_root, tmp_path, capsys,
                                                                       monkeypatch, failing, existed):
    from shard_builder import build as build_module

    def disk_full(path: Path) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    write_members, atomic_write = build_module._write_members, build_module._atomic_write

    def write_members_on_a_full_disk(task, partial):
        if task.path.parent.name == "valid":  # train shards are complete by then (one worker, in order)
            partial.write_bytes(b"half a shard")
            raise disk_full(partial)
        return write_members(task, partial)

    def atomic_write_on_a_full_disk(path, data):
        if path.name == "dataset.json":
            raise disk_full(path)
        atomic_write(path, data)

    if failing == "shard":
        monkeypatch.setattr(build_module, "_write_members", write_members_on_a_full_disk)
    else:
        monkeypatch.setattr(build_module, "_atomic_write", atomic_write_on_a_full_disk)
    out = tmp_path / "new" / "out"
    if existed:
        out.mkdir(parents=True)
    message = _expect_cli_error(synthetic_root, out, capsys, f"{out}: build failed", "No space left on device")
    assert message.count("error:") == 1 and "Traceback" not in message
    if existed:
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not (tmp_path / "new").exists()  # the folders this build created, parents included
    monkeypatch.undo()  # space freed: the same command now succeeds
    assert build_shards(["--root", str(synthetic_root), "--out", str(out), "--workers", "1"]) == 0


def test_real_sample_builds_with_identity_disjoint_splits(sample_shards):
    splits = {name: open_split(sample_shards / name) for name in fmt.SPLITS}
    assert {name: len(s) for name, s in splits.items()} == {"train": 7792, "valid": 1009, "test": 1002}
    identities = {name: set(s.identities.tolist()) for name, s in splits.items()}
    assert not identities["train"] & identities["test"] and not identities["train"] & identities["valid"]
    assert verify(sample_shards, workers=2)["test"] == 1002
