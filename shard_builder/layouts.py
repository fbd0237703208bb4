"""Where a CelebA copy keeps its files: the three layouts seen in the wild, images in a folder or a zip.

- `torchvision`: `img_align_celeba/` (or `img_align_celeba.zip`), `list_attr_celeba.txt`,
  `list_eval_partition.txt` and `identity_CelebA.txt` side by side (torchvision's `celeba/` folder).
- `official` (the authors' Drive folder): `Img/img_align_celeba/` (or `Img/img_align_celeba.zip`),
  `Anno/list_attr_celeba.txt`, `Anno/identity_CelebA.txt`, `Eval/list_eval_partition.txt`.
- `kaggle` (jessicali9530/celeba-dataset): `img_align_celeba/img_align_celeba/` (or `img_align_celeba.zip`),
  `list_attr_celeba.csv`, `list_eval_partition.csv`, and no identity file.

The identity file is optional in every layout (identities are then `format.UNKNOWN_IDENTITY`); where a folder
and a zip of the images are both present (torchvision leaves its zip after extracting it), the folder is read.
A zip is read in place, member by member, whatever its members' folder prefix.
"""
from __future__ import annotations

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from shard_builder.annotations import AnnotationError

IDENTITY_FILE = "identity_CelebA.txt"
_ZIP_TIME = (2015, 1, 1, 0, 0, 0)  # fixed member dates: the same files give the same zip bytes


@dataclass(frozen=True)
class LayoutSpec:
    """One layout's files, relative to its root folder."""

    name: str
    image_folder: str
    image_zip: str
    attributes: str
    partitions: str
    identities: str  # optional


LAYOUTS = {spec.name: spec for spec in (
    LayoutSpec("torchvision", "img_align_celeba", "img_align_celeba.zip", "list_attr_celeba.txt",
               "list_eval_partition.txt", IDENTITY_FILE),
    LayoutSpec("official", "Img/img_align_celeba", "Img/img_align_celeba.zip", "Anno/list_attr_celeba.txt",
               "Eval/list_eval_partition.txt", f"Anno/{IDENTITY_FILE}"),
    LayoutSpec("kaggle", "img_align_celeba/img_align_celeba", "img_align_celeba.zip", "list_attr_celeba.csv",
               "list_eval_partition.csv", IDENTITY_FILE),
)}


class UnreadableImage(Exception):
    """An image's bytes cannot be read (a damaged zip member, an I/O error); the message says why."""


# One handle per process: a zip opened before a fork would share its file offset with the children.
_open_zips: dict[tuple[Path, int], zipfile.ZipFile] = {}


def _zip(path: Path) -> zipfile.ZipFile:
    key = (path, os.getpid())
    if key not in _open_zips:
        _open_zips[key] = zipfile.ZipFile(path)
    return _open_zips[key]


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, fields the central directory also has, name/extra lengths


def _read_member(archive: zipfile.ZipFile, member: str) -> bytes:
    """A member's bytes from two preads (its local header, then its data), inflated and CRC-checked.

    ZipFile.read (several small seeks and reads, a file object per member) made a build from the zip ~12% slower
    than from the extracted folder; this brings it level (BENCHMARKS.md). Offsets and sizes come from zipfile's
    reading of the central directory, so zip64 and data descriptors need nothing here."""
    info = archive.getinfo(member)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
        return archive.read(info)  # other methods, encryption: zipfile's own path
    fd = archive.fp.fileno()
    header = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header")
    _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    data = os.pread(fd, info.compress_size, info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
    if len(data) != info.compress_size:
        raise EOFError("the zip ends inside this member")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        data = zlib.decompress(data, -15)  # a raw deflate stream, no zlib header
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise zipfile.BadZipFile("size or CRC-32 differs from the zip's directory")
    return data


@dataclass(frozen=True)
class ImageSource:
    """The aligned JPEGs: a folder, or a zip whose member `member_prefix + file name` holds each image."""

    path: Path
    member_prefix: str | None = None  # None: a folder

    @property
    def is_zip(self) -> bool:
        return self.member_prefix is not None

    def location(self, name: str) -> str:
        """How an error names image `name`."""
        return f"{self.path}, member {self.member_prefix}{name}" if self.is_zip else str(self.path / name)

    def read(self, name: str) -> bytes:
        """The bytes of image `name`; FileNotFoundError if absent, UnreadableImage if it cannot be read."""
        if not self.is_zip:
            try:
                return (self.path / name).read_bytes()
            except FileNotFoundError:
                raise
            except OSError as err:
                raise UnreadableImage(f"cannot read file ({err.strerror})") from None
        try:
            return _read_member(_zip(self.path), self.member_prefix + name)
        except KeyError:
            raise FileNotFoundError(name) from None
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
            raise UnreadableImage(f"damaged zip member ({err})") from None


@dataclass(frozen=True)
class Layout:
    """A recognised CelebA copy: which layout, and the files to read (identities None when absent)."""

    name: str
    root: Path
    images: ImageSource
    attributes: Path
    partitions: Path
    identities: Path | None

    def describe(self) -> dict:
        """The layout and the files read, relative to its root (recorded in dataset.json)."""
        def relative(path: Path | None) -> str | None:
            return None if path is None else path.relative_to(self.root).as_posix()

        return {"layout": self.name, "images": relative(self.images.path), "attributes": relative(self.attributes),
                "partitions": relative(self.partitions), "identities": relative(self.identities)}


def _zip_source(path: Path) -> ImageSource:
    """Open the zip once here to find the folder its JPEGs are in (`img_align_celeba/` in CelebA's own zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            first = next((name for name in archive.namelist() if name.lower().endswith(".jpg")), None)
    except (zipfile.BadZipFile, OSError) as err:
        raise AnnotationError(f"{path}: not a readable zip file ({err})") from None
    if first is None:
        raise AnnotationError(f"{path}: the zip holds no .jpg image")
    return ImageSource(path, first[: first.rfind("/") + 1])


def _match(spec: LayoutSpec, folder: Path) -> Layout | None:
    if not ((folder / spec.attributes).is_file() and (folder / spec.partitions).is_file()):
        return None
    if (folder / spec.image_folder).is_dir():
        images = ImageSource(folder / spec.image_folder)
    elif (folder / spec.image_zip).is_file():
        images = _zip_source(folder / spec.image_zip)
    else:
        return None
    identities = folder / spec.identities
    return Layout(spec.name, folder, images, folder / spec.attributes, folder / spec.partitions,
                  identities if identities.is_file() else None)


def find_layout(root: Path) -> Layout:
    """The layout of `root` or of `root/celeba` (torchvision's root); the error lists what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise AnnotationError(f"{root}: folder does not exist")
    folders = (root, root / "celeba")
    for folder in folders:
        for spec in LAYOUTS.values():
            layout = _match(spec, folder)
            if layout is not None:
                return layout
    looked_for = "; ".join(f"{spec.name}: {spec.image_folder}/ or {spec.image_zip}, {spec.attributes}, "
                           f"{spec.partitions}" for spec in LAYOUTS.values())
    candidates = dict.fromkeys(path for spec in LAYOUTS.values() for path in (
        spec.image_folder, spec.image_zip, spec.attributes, spec.partitions, spec.identities))
    found = [(folder / path).relative_to(root).as_posix() + ("/" if (folder / path).is_dir() else "")
             for folder in folders for path in candidates if (folder / path).exists()]
    raise AnnotationError(f"{root}: not a CelebA folder in a known layout; looked for (here and in celeba/) "
                          f"{looked_for}; found {', '.join(found) if found else 'none of these'}")


def write_image_zip(folder: Path, path: Path) -> None:
    """Store the files of `folder` as CelebA's own zip stores its images: a folder entry, then a deflated
    `img_align_celeba/<file name>` per file (fixed dates, so the same files give the same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        entry = zipfile.ZipInfo("img_align_celeba/", _ZIP_TIME)
        entry.external_attr = 0o40755 << 16 | 0x10  # a directory, as zip tools record it
        archive.writestr(entry, b"")
        for image in sorted(folder.iterdir()):
            entry = zipfile.ZipInfo(f"img_align_celeba/{image.name}", _ZIP_TIME)
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, image.read_bytes(), zipfile.ZIP_DEFLATED)
