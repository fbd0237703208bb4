"""build-shards on every CelebA layout (torchvision, official, Kaggle; images in a folder or a zip): the same shards
as torchvision's layout, unknown identities without an identity file, a precise error for anything else, damaged
zip members named and skippable."""
from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from shard_builder import format as fmt
from shard_builder.build import BuildOptions, build
from shard_builder.cli import main as build_shards
from shard_builder.read import open_split
from shard_builder.synthetic import generate
from shard_builder.verify import verify

NUM_IMAGES, PER_IDENTITY, SEED = 60, 6, 3
OPTIONS = BuildOptions(samples_per_shard=16, workers=2)
# The files each layout is read from, typed out here (not taken from shard_builder.layouts).
TORCHVISION = {"images": "img_align_celeba", "attributes": "list_attr_celeba.txt",
               "partitions": "list_eval_partition.txt", "identities": "identity_CelebA.txt"}
OFFICIAL = {"images": "Img/img_align_celeba", "attributes": "Anno/list_attr_celeba.txt",
            "partitions": "Eval/list_eval_partition.txt", "identities": "Anno/identity_CelebA.txt"}
KAGGLE = {"images": "img_align_celeba/img_align_celeba", "attributes": "list_attr_celeba.csv",
          "partitions": "list_eval_partition.csv", "identities": None}


def _digests(out: Path) -> dict[str, str]:
    """sha256 of every shard, index and manifest (dataset.json differs by design: it records the layout)."""
    files = [p for p in sorted(out.rglob("*")) if p.suffix in (".tar", ".idx", ".parquet")]
    assert files
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _generate(root: Path, layout: str = "torchvision", zipped: bool = False) -> Path:
    generate(root, NUM_IMAGES, seed=SEED, images_per_identity=PER_IDENTITY, workers=2, layout=layout,
             zip_images=zipped)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """Builds of the torchvision folder layout: with identities, and with identity_CelebA.txt removed."""
    base = tmp_path_factory.mktemp("reference")
    root = _generate(base / "celeba")
    build(root, base / "known", OPTIONS)
    (root / "identity_CelebA.txt").unlink()
    build(root, base / "unknown", OPTIONS)
    return {"known": base / "known", "unknown": base / "unknown"}


@pytest.mark.parametrize(("layout", "zipped", "files"), [
    ("torchvision", False, TORCHVISION),
    ("torchvision", True, dict(TORCHVISION, images="img_align_celeba.zip")),
    ("official", False, OFFICIAL),
    ("official", True, dict(OFFICIAL, images="Img/img_align_celeba.zip")),
    ("kaggle", False, KAGGLE),
    ("kaggle", True, dict(KAGGLE, images="img_align_celeba.zip")),
])
def test_every_layout_gives_the_torchvision_layouts_shards(reference, tmp_path, layout, zipped, files):
    root = _generate(tmp_path / "download", layout, zipped)
    out = tmp_path / "out"
    build(root, out, OPTIONS)
    # Kaggle has no identity file: its shards are those of torchvision's layout without one.
    assert _digests(out) == _digests(reference["unknown" if layout == "kaggle" else "known"])
    assert json.loads((out / "dataset.json").read_text())["source"] == {"layout": layout, **files}
    counts = verify(out, root, workers=2)  # every member re-derived from the folder or the zip
    assert sum(counts.values()) == NUM_IMAGES


def test_root_may_hold_the_layout_in_celeba(tmp_path):
    _generate(tmp_path / "data" / "celeba", "official", zipped=True)
    build(tmp_path / "data", tmp_path / "out", OPTIONS)
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["source"]["layout"] == "official"


def test_folder_is_read_when_the_zip_is_also_there(reference, tmp_path):
    root = _generate(tmp_path / "celeba")
    (root / "img_align_celeba.zip").write_bytes(b"torchvision keeps the zip it extracted; it is not read")
    build(root, tmp_path / "out", OPTIONS)
    assert _digests(tmp_path / "out") == _digests(reference["known"])
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["source"]["images"] == "img_align_celeba"


def test_unknown_identities_are_the_sentinel_and_everything_else_works(reference, tmp_path):
    from edit import identity as identity_edit
    from edit.common import EditError
    from loaders import LOADER_KINDS, make_loader

    out = reference["unknown"]
    assert json.loads((out / "dataset.json").read_text())["source"]["identities"] is None
    manifest = pq.read_table(out / "train" / "manifest.parquet")
    assert fmt.UNKNOWN_IDENTITY == -1 and set(manifest.column("identity").to_pylist()) == {-1}
    split = open_split(out / "train")
    with open(split.shards[0], "rb") as shard:
        shard.seek(int(split.offset[split.position == 0][0]))
        assert shard.read(fmt.LABEL_BYTES)[fmt.NUM_ATTRIBUTES:] == b"\xff\xff\xff\xff"
    for kind in LOADER_KINDS:
        loader = make_loader(kind, out / "train", 16, torch.device("cpu"), shuffle=True, drop_last=False,
                             num_workers=1)
        loader.set_epoch(0)
        batches = list(loader)
        assert sum(int(batch.mask.sum()) for batch in batches) == len(split), kind
        assert all((batch.identities == -1).all() for batch in batches), kind
    # Identity transfer is the one thing that needs identities: it stops before any model work.
    context = SimpleNamespace(shards=out, split=lambda name: open_split(out / name))
    with pytest.raises(EditError, match=r"identity_CelebA\.txt.*rebuild"):
        identity_edit.run(context, identity_edit.IdentitySettings(), tmp_path, print)


def test_a_folder_in_no_known_layout_names_what_was_looked_for_and_found(tmp_path, capsys):
    root = tmp_path / "download"
    (root / "img_align_celeba").mkdir(parents=True)
    (root / "list_attr_celeba.txt").write_text("")
    assert build_shards(["--root", str(root), "--out", str(tmp_path / "out")]) == 1
    message = capsys.readouterr().err.split("error: ", 1)[1]
    assert message.count("\n") == 1 and message.startswith(f"{root}: not a CelebA folder")
    for looked_for in ("list_eval_partition.txt", "Img/img_align_celeba.zip", "Anno/list_attr_celeba.txt",
                       "Eval/list_eval_partition.txt", "img_align_celeba/img_align_celeba/", "list_attr_celeba.csv",
                       "list_eval_partition.csv"):
        assert looked_for in message
    assert message.rstrip().endswith("found img_align_celeba/, list_attr_celeba.txt")
    assert not (tmp_path / "out").exists()

    (tmp_path / "empty").mkdir()
    assert build_shards(["--root", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "found none of these" in capsys.readouterr().err
    assert build_shards(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'nowhere'}: folder does not exist" in capsys.readouterr().err


# --- damaged zips ------------------------------------------------------------------------------------------------

MEMBER = "img_align_celeba/000007.jpg"


@pytest.fixture(scope="module")
def zipped_root(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("zipped") / "celeba", zipped=True)


def _data_offset(archive: Path, member: str) -> tuple[int, int]:
    """Where `member`'s (compressed) bytes start in the zip, and how many there are."""
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo(member)
    with open(archive, "rb") as stream:
        stream.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(stream.read(4), dtype="<u2")
    return info.header_offset + 30 + int(name_length) + int(extra_length), info.compress_size


def _corrupt_bytes(archive: Path) -> None:
    start, size = _data_offset(archive, MEMBER)
    data = bytearray(archive.read_bytes())
    data[start + size // 2:start + size // 2 + 64] = b"\xa5" * 64
    archive.write_bytes(bytes(data))


def _bad_crc(archive: Path) -> None:
    """Store the member uncompressed, then flip one of its bytes: only the CRC can tell."""
    rewritten = archive.with_suffix(".new")
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(rewritten, "w") as new:
        for info in old.infolist():
            new.writestr(info, old.read(info), zipfile.ZIP_STORED if info.filename == MEMBER else info.compress_type)
    rewritten.replace(archive)
    start, size = _data_offset(archive, MEMBER)
    data = bytearray(archive.read_bytes())
    data[start + size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


def _clobbered_header(archive: Path) -> None:
    start, _ = _data_offset(archive, MEMBER)
    data = bytearray(archive.read_bytes())
    data[start - 30 - len(MEMBER):start - len(MEMBER)] = bytes(30)  # the member's local header
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_corrupt_bytes, _bad_crc, _clobbered_header])
def test_damaged_zip_member_is_named_and_skippable(zipped_root, tmp_path, capsys, damage):
    root = tmp_path / "celeba"
    shutil.copytree(zipped_root, root)
    damage(root / "img_align_celeba.zip")
    assert build_shards(["--root", str(root), "--out", str(tmp_path / "a"), "--workers", "2"]) == 1
    message = capsys.readouterr().err
    assert f"{root / 'img_align_celeba.zip'}, member {MEMBER}: damaged zip member (" in message, message
    assert not (tmp_path / "a" / "dataset.json").exists()

    assert build_shards(["--root", str(root), "--out", str(tmp_path / "b"), "--skip-bad", "--workers", "2"]) == 0
    skipped = json.loads((tmp_path / "b" / "dataset.json").read_text())["skipped"]
    assert [(entry["file"], entry["reason"].split(" (")[0]) for entry in skipped] == [
        ("000007.jpg", "damaged zip member")]
    assert sum(verify(tmp_path / "b").values()) == NUM_IMAGES - 1


def test_a_zip_of_stored_members_gives_the_same_shards(zipped_root, reference, tmp_path):
    root = tmp_path / "celeba"
    shutil.copytree(zipped_root, root)
    archive = root / "img_align_celeba.zip"
    with zipfile.ZipFile(zipped_root / archive.name) as deflated, zipfile.ZipFile(archive, "w") as stored:
        for info in deflated.infolist():
            stored.writestr(info, deflated.read(info), zipfile.ZIP_STORED)
    build(root, tmp_path / "out", OPTIONS)
    assert _digests(tmp_path / "out") == _digests(reference["known"])


def test_truncated_zip_is_named(zipped_root, tmp_path, capsys):
    root = tmp_path / "celeba"
    shutil.copytree(zipped_root, root)
    archive = root / "img_align_celeba.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])  # an interrupted download
    assert build_shards(["--root", str(root), "--out", str(tmp_path / "out")]) == 1
    assert f"{archive}: not a readable zip file" in capsys.readouterr().err


# --- the real sample, converted ----------------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[str], end: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((end.join(lines) + end).encode("ascii"))


def _convert(sample: Path, base: Path, every: int) -> dict[str, Path]:
    """Every `every`-th image of the sample in torchvision's layout (with and without identities), the official
    layout with a zip, and the Kaggle layout with a folder; folders are links to the sample's."""
    attr_lines = (sample / "list_attr_celeba.txt").read_text().splitlines()
    header, rows = attr_lines[1], attr_lines[2:][::every]
    files = [row.split()[0] for row in rows]
    keep = set(files)
    identity = [line for line in (sample / "identity_CelebA.txt").read_text().splitlines() if line.split()[0] in keep]
    partition = [line for line in (sample / "list_eval_partition.txt").read_text().splitlines()
                 if line.split()[0] in keep]
    roots = {}
    for name, with_identity in (("torchvision", True), ("torchvision-no-identity", False)):
        root = roots[name] = base / name
        _write_lines(root / "list_attr_celeba.txt", [str(len(rows)), header] + rows, "\r\n")
        _write_lines(root / "list_eval_partition.txt", partition, "\r\n")
        if with_identity:
            _write_lines(root / "identity_CelebA.txt", identity, "\r\n")
        (root / "img_align_celeba").symlink_to(sample / "img_align_celeba")

    official = roots["official"] = base / "official"
    _write_lines(official / "Anno" / "list_attr_celeba.txt", [str(len(rows)), header] + rows, "\r\n")
    _write_lines(official / "Anno" / "identity_CelebA.txt", identity, "\r\n")
    _write_lines(official / "Eval" / "list_eval_partition.txt", partition, "\r\n")
    (official / "Img").mkdir()
    with zipfile.ZipFile(official / "Img" / "img_align_celeba.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.write(sample / "img_align_celeba" / name, f"img_align_celeba/{name}")

    kaggle = roots["kaggle"] = base / "kaggle"
    _write_lines(kaggle / "list_attr_celeba.csv",
                 [",".join(["image_id", *header.split()])] + [",".join(row.split()) for row in rows], "\n")
    _write_lines(kaggle / "list_eval_partition.csv",
                 ["image_id,partition"] + [",".join(line.split()) for line in partition], "\n")
    (kaggle / "img_align_celeba").mkdir()
    (kaggle / "img_align_celeba" / "img_align_celeba").symlink_to(sample / "img_align_celeba")
    return roots


@pytest.mark.slow
def test_real_sample_in_the_official_and_kaggle_layouts(sample_root, tmp_path):
    roots = _convert(sample_root, tmp_path / "roots", every=16)
    digests = {}
    for name, root in roots.items():
        build(root, tmp_path / name, OPTIONS)
        digests[name] = _digests(tmp_path / name)
    assert digests["official"] == digests["torchvision"]
    assert digests["kaggle"] == digests["torchvision-no-identity"] != digests["torchvision"]
    assert sum(verify(tmp_path / "official", roots["official"], workers=2).values()) == len(
        (roots["torchvision"] / "list_eval_partition.txt").read_text().splitlines())
