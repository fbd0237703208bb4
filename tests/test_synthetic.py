"""The synthetic CelebA: exact torchvision/CelebA file formats, determinism, partitions, labels true to the pixels."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shard_builder.synthetic import generate, main

NUM_IMAGES, PER_IDENTITY = 300, 10
# Line 2 of CelebA's list_attr_celeba.txt, trailing space included (typed out here so the test is independent).
HEADER = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
          "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
          "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
          "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
          "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young ")
NAMES = HEADER.split()
FILES = ("list_attr_celeba.txt", "identity_CelebA.txt", "list_eval_partition.txt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "celeba"
    generate(out, NUM_IMAGES, seed=0, images_per_identity=PER_IDENTITY, workers=2)
    return out


def _lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n"), f"{path.name}: not CRLF throughout"
    return data.decode("ascii").split("\r\n")[:-1]


@pytest.fixture(scope="module")
def table(dataset: Path) -> dict:
    """Attributes [N, 40] as bools, identities [N] and partition codes [N], checked to list the same files."""
    rows = [line.split() for line in _lines(dataset / "list_attr_celeba.txt")[2:]]
    ids = [line.split() for line in _lines(dataset / "identity_CelebA.txt")]
    parts = [line.split() for line in _lines(dataset / "list_eval_partition.txt")]
    files = [row[0] for row in rows]
    assert files == [row[0] for row in ids] == [row[0] for row in parts]
    return {"files": files, "attrs": np.array([[v == "1" for v in row[1:]] for row in rows]),
            "identity": np.array([int(row[1]) for row in ids]), "split": np.array([int(row[1]) for row in parts])}


def _column(table: dict, name: str) -> np.ndarray:
    return table["attrs"][:, NAMES.index(name)]


def test_layout_and_exact_formats(dataset: Path, table: dict) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == sorted(("img_align_celeba",) + FILES)
    expected = [f"{i:06d}.jpg" for i in range(1, NUM_IMAGES + 1)]
    assert sorted(p.name for p in (dataset / "img_align_celeba").iterdir()) == expected
    assert table["files"] == expected

    attr_lines = _lines(dataset / "list_attr_celeba.txt")
    assert attr_lines[0] == str(NUM_IMAGES) and attr_lines[1] == HEADER
    # CelebA's spacing: "000001.jpg -1  1 ..." (first value after one space, the others in 2-wide columns).
    row = re.compile(r"\d{6}\.jpg -?1(?: -1|  1){39}")
    assert all(row.fullmatch(line) for line in attr_lines[2:])
    assert all(re.fullmatch(r"\d{6}\.jpg [1-9]\d*", line) for line in _lines(dataset / "identity_CelebA.txt"))
    assert all(re.fullmatch(r"\d{6}\.jpg [012]", line) for line in _lines(dataset / "list_eval_partition.txt"))

    for name in expected:
        with Image.open(dataset / "img_align_celeba" / name) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (178, 218))


def test_same_seed_same_bytes_whatever_the_process_count(dataset: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", NUM_IMAGES, seed=0, images_per_identity=PER_IDENTITY, workers=1)
    for path in sorted(dataset.rglob("*.*")):
        assert (tmp_path / "again" / path.relative_to(dataset)).read_bytes() == path.read_bytes(), path.name

    generate(tmp_path / "other", NUM_IMAGES, seed=1, images_per_identity=PER_IDENTITY, workers=2)
    # (The partition file depends only on the counts, so it is the same for every seed.)
    for name in ("list_attr_celeba.txt", "identity_CelebA.txt", "img_align_celeba/000001.jpg"):
        assert (tmp_path / "other" / name).read_bytes() != (dataset / name).read_bytes(), name


def test_partitions_are_identity_disjoint_80_10_10_and_ordered(table: dict) -> None:
    split, identity = table["split"], table["identity"]
    members = [set(identity[split == code]) for code in (0, 1, 2)]
    assert not (members[0] & members[1] or members[0] & members[2] or members[1] & members[2])
    shares = np.bincount(split, minlength=3) / len(split)
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.05), shares
    assert np.all(np.diff(split) >= 0), "CelebA numbers train images first, then valid, then test"
    assert len(set(identity)) == NUM_IMAGES // PER_IDENTITY


def test_person_traits_are_constant_per_identity(table: dict) -> None:
    traits = ["Male", "Pale_Skin", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Bald", "Bangs",
              "No_Beard", "Young"]
    columns = np.stack([_column(table, name) for name in traits], axis=1)
    for person in np.unique(table["identity"]):
        mine = columns[table["identity"] == person]
        assert (mine == mine[0]).all(), f"identity {person} changes {np.array(traits)[(mine != mine[0]).any(0)]}"
    hair = np.stack([_column(table, n) for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")], axis=1)
    assert hair.sum(1).max() <= 1
    assert not (~_column(table, "No_Beard") & ~_column(table, "Male")).any(), "a beard on a female face"
    assert not (_column(table, "Bald") & hair.any(1)).any()
    # Expression and accessories do vary within identities.
    assert any(len(set(_column(table, "Smiling")[table["identity"] == p])) == 2 for p in np.unique(table["identity"]))


def _luminance(dataset: Path, files: list[str]) -> np.ndarray:
    pixels = np.stack([np.asarray(Image.open(dataset / "img_align_celeba" / f), dtype=np.float32) for f in files])
    return pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = score[positive][:, None], score[~positive][None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def test_eyeglasses_are_in_the_picture(dataset: Path, table: dict) -> None:
    # Independent check: share of pixels in the eye band much darker than the face's own cheek skin.
    lum = _luminance(dataset, table["files"])
    cheeks = np.median(lum[:, 120:130, 62:116].reshape(len(lum), -1), axis=1)
    dark = (lum[:, 96:122, 56:122] < 0.55 * cheeks[:, None, None]).mean(axis=(1, 2))
    glasses = _column(table, "Eyeglasses")
    assert 10 <= glasses.sum() <= 0.3 * len(glasses)
    assert _auc(dark, glasses) > 0.95


def test_hair_colour_is_in_the_picture(dataset: Path, table: dict) -> None:
    # The crown of the head, just above the forehead; hats and bald heads hide or lack hair there.
    visible = ~_column(table, "Wearing_Hat") & ~_column(table, "Bald")
    crown = _luminance(dataset, table["files"])[:, 60:67, 82:96].mean(axis=(1, 2))
    blond, black = crown[visible & _column(table, "Blond_Hair")], crown[visible & _column(table, "Black_Hair")]
    assert len(blond) >= 10 and len(black) >= 10
    assert blond.min() > black.max(), (blond.min(), black.max())


def test_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        generate(tmp_path, 30, images_per_identity=5)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_cli(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "cli"), "--num-images", "40", "--images-per-identity", "4"]) == 0
    assert len(list((tmp_path / "cli" / "img_align_celeba").iterdir())) == 40
    assert main(["--out", str(tmp_path / "cli"), "--num-images", "40"]) == 1  # now non-empty
    assert main(["--out", str(tmp_path / "few"), "--num-images", "20"]) == 1  # one identity cannot fill 3 splits


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A 30-image set in torchvision's layout, for the other layouts to be compared with."""
    out = tmp_path_factory.mktemp("small") / "celeba"
    generate(out, 30, seed=2, images_per_identity=5, workers=2)
    return out


@pytest.mark.parametrize(("layout", "zipped", "tree"), [
    ("torchvision", True, ["identity_CelebA.txt", "img_align_celeba.zip", "list_attr_celeba.txt",
                           "list_eval_partition.txt"]),
    ("official", False, ["Anno/identity_CelebA.txt", "Anno/list_attr_celeba.txt", "Eval/list_eval_partition.txt",
                         "Img/img_align_celeba/"]),
    ("official", True, ["Anno/identity_CelebA.txt", "Anno/list_attr_celeba.txt", "Eval/list_eval_partition.txt",
                        "Img/img_align_celeba.zip"]),
    ("kaggle", False, ["img_align_celeba/img_align_celeba/", "list_attr_celeba.csv", "list_eval_partition.csv"]),
    ("kaggle", True, ["img_align_celeba.zip", "list_attr_celeba.csv", "list_eval_partition.csv"]),
])
def test_other_layouts_hold_the_same_images_and_labels(small: Path, tmp_path: Path, layout: str, zipped: bool,
                                                        tree: list[str]) -> None:
    out = tmp_path / layout
    generate(out, 30, seed=2, images_per_identity=5, workers=2, layout=layout, zip_images=zipped)
    # Files, with each folder of JPEGs listed once as `folder/`.
    found = {(p.parent.relative_to(out).as_posix() + "/") if p.suffix == ".jpg" else p.relative_to(out).as_posix()
             for p in out.rglob("*") if p.is_file()}
    assert sorted(found) == tree
    images = {p.name: p.read_bytes() for p in sorted((small / "img_align_celeba").iterdir())}
    if zipped:
        with zipfile.ZipFile(out / next(t for t in tree if t.endswith(".zip"))) as archive:
            assert archive.namelist() == ["img_align_celeba/"] + [f"img_align_celeba/{name}" for name in images]
            assert all(archive.read(f"img_align_celeba/{name}") == data for name, data in images.items())
    else:
        folder = out / next(t for t in tree if t.endswith("/"))
        assert all((folder / name).read_bytes() == data for name, data in images.items())
    if layout != "kaggle":
        for name in FILES:
            assert (out / next(t for t in tree if t.endswith(name))).read_bytes() == (small / name).read_bytes()
        return
    # Kaggle's CSVs: the same labels, comma-separated after an image_id header.
    attributes = [line.split() for line in _lines(small / "list_attr_celeba.txt")[2:]]
    assert (out / "list_attr_celeba.csv").read_text() == "".join(
        ",".join(row) + "\n" for row in [["image_id", *NAMES], *attributes])
    partitions = [line.split() for line in _lines(small / "list_eval_partition.txt")]
    assert (out / "list_eval_partition.csv").read_text() == "".join(
        ",".join(row) + "\n" for row in [["image_id", "partition"], *partitions])


def test_cli_writes_a_layout(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "k"), "--num-images", "20", "--images-per-identity", "4", "--layout", "kaggle",
                 "--zip"]) == 0
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "img_align_celeba.zip", "list_attr_celeba.csv", "list_eval_partition.csv"]
