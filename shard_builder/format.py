"""The shard format: the one contract between `build-shards` and every loader.

A split folder `OUT/<split>/` holds `<split>-NNNNNN.tar` shards, one DALI `<split>-NNNNNN.idx` per shard and
`manifest.parquet`; `OUT/dataset.json` describes the whole build. Each sample is ONE tar member (tar members
cost >= 1 KiB each, so image, attributes and identity share one), named `<key>.<encoding>` where `key` is the
CelebA file stem. Every member carries a fixed 44-byte label block at a fixed offset, so a reader (a DALI
pipeline included) can slice the labels out of the raw member bytes without parsing anything:

    label block = 40 attribute bytes (0 or 1, CelebA's attribute order) + identity (int32, little-endian)

The identity is CelebA's identity number (1..10,177), or UNKNOWN_IDENTITY (-1, bytes ff ff ff ff; also -1 in
the manifest) for every image of a build made without an identity file (the Kaggle copy has none).

- `raw`: label block at offset 0, then the 64x64x3 HWC uint8 pixels (12,288 bytes).
- `jpg`: a valid baseline JPEG; the label block is the payload of a COM segment placed right after the
  JFIF APP0 segment, at byte offset 24. Any JPEG decoder (PIL, libjpeg-turbo, nvJPEG) skips COM segments.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

FORMAT_NAME = "celeba-vae-shards"
FORMAT_VERSION = 1
IMAGE_SIZE = 64
CHANNELS = 3
NUM_ATTRIBUTES = 40
LABEL_BYTES = NUM_ATTRIBUTES + 4
RAW_PIXEL_BYTES = IMAGE_SIZE * IMAGE_SIZE * CHANNELS
RAW_MEMBER_BYTES = LABEL_BYTES + RAW_PIXEL_BYTES
ENCODINGS = ("raw", "jpg")
SPLITS = ("train", "valid", "test")
PARTITION_CODES = {0: "train", 1: "valid", 2: "test"}
UNKNOWN_IDENTITY = -1  # the identity of every image when the CelebA copy has no identity_CelebA.txt

LABEL_OFFSET = {"raw": 0, "jpg": 24}
# JPEG layout we write: SOI (2) + JFIF APP0 (2 marker + 16 length) + COM marker (2) + length (2).
_JFIF_APP0_END = 20
_COM_MARKER = b"\xff\xfe"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def pack_labels(attributes: np.ndarray, identity: int) -> bytes:
    """40 attributes in {0,1} + identity -> the 44-byte label block."""
    attrs = np.asarray(attributes, dtype=np.uint8)
    if attrs.shape != (NUM_ATTRIBUTES,) or attrs.max(initial=0) > 1:
        raise ValueError(f"expected {NUM_ATTRIBUTES} attributes in {{0,1}}, got {attrs!r}")
    return attrs.tobytes() + struct.pack("<i", identity)


def unpack_labels(block: bytes | np.ndarray) -> tuple[np.ndarray, int]:
    raw = bytes(block)
    if len(raw) != LABEL_BYTES:
        raise ValueError(f"label block must be {LABEL_BYTES} bytes, got {len(raw)}")
    return np.frombuffer(raw[:NUM_ATTRIBUTES], dtype=np.uint8).copy(), struct.unpack("<i", raw[NUM_ATTRIBUTES:])[0]


def labels_from_member(data: bytes, encoding: str) -> tuple[np.ndarray, int]:
    offset = LABEL_OFFSET[encoding]
    if encoding == "jpg" and data[_JFIF_APP0_END:_JFIF_APP0_END + 2] != _COM_MARKER:
        raise ValueError("JPEG member has no label COM segment at byte 20")
    return unpack_labels(data[offset:offset + LABEL_BYTES])


def pack_raw(pixels_hwc: np.ndarray, labels: bytes) -> bytes:
    if pixels_hwc.shape != (IMAGE_SIZE, IMAGE_SIZE, CHANNELS) or pixels_hwc.dtype != np.uint8:
        raise ValueError(f"expected uint8 {IMAGE_SIZE}x{IMAGE_SIZE}x{CHANNELS} pixels, got {pixels_hwc.dtype} {pixels_hwc.shape}")
    return labels + np.ascontiguousarray(pixels_hwc).tobytes()


def unpack_raw(data: bytes) -> np.ndarray:
    """Member bytes -> HWC uint8 pixels (a read-only view)."""
    if len(data) != RAW_MEMBER_BYTES:
        raise ValueError(f"raw member must be {RAW_MEMBER_BYTES} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=LABEL_BYTES).reshape(IMAGE_SIZE, IMAGE_SIZE, CHANNELS)


def split_raw_members(members):
    """[B, RAW_MEMBER_BYTES] uint8 rows of raw members, a numpy array or a torch tensor -> (label blocks [B, 44],
    a view; dense HWC pixels [B, 64, 64, 3], a copy: one row-wise memcpy drops the label bytes)."""
    pixels = members[:, LABEL_BYTES:]
    pixels = pixels.contiguous() if hasattr(pixels, "contiguous") else np.ascontiguousarray(pixels)
    return members[:, :LABEL_BYTES], pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)


def insert_jpeg_labels(jpeg: bytes, labels: bytes) -> bytes:
    """Put the label block in a COM segment right after the JFIF APP0 segment Pillow writes."""
    if jpeg[:4] != b"\xff\xd8\xff\xe0" or jpeg[4:6] != b"\x00\x10":
        raise ValueError("expected a JFIF JPEG starting with SOI + 16-byte APP0 (as Pillow writes)")
    com = _COM_MARKER + struct.pack(">H", LABEL_BYTES + 2) + labels
    return jpeg[:_JFIF_APP0_END] + com + jpeg[_JFIF_APP0_END:]


@dataclass(frozen=True)
class Crop:
    """A crop box (left, top, right, bottom) on the 178x218 aligned CelebA image; None = centre square."""

    name: str
    box: tuple[int, int, int, int] | None

    def box_for(self, width: int, height: int) -> tuple[int, int, int, int]:
        if self.box is not None:
            return self.box
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side


# `center` reproduces the field of view of the course's torchvision Resize(64)+CenterCrop(64); `nvae148` is
# NVAE's CelebA-64 crop.
CROPS = {
    "center": Crop("center", None),
    "nvae148": Crop("nvae148", (15, 40, 163, 188)),
}
