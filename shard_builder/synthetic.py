"""A synthetic CelebA in any of its real layouts, so every command runs on a machine without the real data.

    python -m shard_builder.synthetic --out data/synthetic-celeba [--num-images 6000] [--seed 0] \
        [--layout torchvision|official|kaggle] [--zip]

Writes `img_align_celeba/NNNNNN.jpg` (178x218 RGB, Pillow's quality-75 4:2:0 JPEG like CelebA's files) and the
three CRLF annotation files, formatted byte-for-byte like the real ones, in torchvision's layout; or the same
files in the official Drive folder's layout (`Img/`, `Anno/`, `Eval/`); or the Kaggle copy's (images one folder
deeper, the attribute and partition files as CSV, no identity file). `--zip` stores the images as
`img_align_celeba.zip` (deflated members `img_align_celeba/NNNNNN.jpg`, like CelebA's own zip) instead of a
folder. The images and labels are the same in every layout for the same seed. Faces are drawn procedurally and the
labels are true to the picture for the attributes a model can see at 64x64 (Eyeglasses, Smiling,
Mouth_Slightly_Open, hair colour, Bangs, Bald, Pale_Skin, Wearing_Hat, Male/No_Beard/Goatee/Mustache, ...);
the rest get CelebA-like base rates. All features stay inside the central 178x178 square (rows 20..198) that
the default preprocessing keeps.

Each identity keeps its geometry and colouring (face shape, skin, hair, eyes, sex, beard); each image varies
pose, lighting, background, clothing and expression/accessories. Partitions are 80/10/10 by identity, and
files are numbered train first, then valid, then test, as in CelebA.

Determinism: labels are planned from `seed` in the parent; rendering randomness comes from one generator per
fixed-size chunk seeded with (seed, chunk index), so the bytes do not depend on the number of processes.
Measured: 6,000 images in 11.8 s (508 img/s) on 2 idle CPU cores, about 3.3 ms of CPU per image to draw and
encode; 20-40 s while other processes competed for the same two cores.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from rich.console import Console
from rich.table import Table

from shard_builder.layouts import LAYOUTS, LayoutSpec, write_image_zip
from shard_builder.format import PARTITION_CODES
from shard_builder.parallel import run_parallel, tick

ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
WIDTH, HEIGHT = 178, 218
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "other")
SPLIT_CODES = {split: code for code, split in PARTITION_CODES.items()}  # train 0, valid 1, test 2
CHUNK = 100  # images per rendering task; fixed so the output does not depend on the number of workers
WITHOUT_IDENTITIES = ("kaggle",)  # the Kaggle archive ships no identity file
_PAD = 32  # the face is drawn on a padded canvas so rotating/shifting it never exposes an empty corner
_CX, _CY = WIDTH // 2 + _PAD, 116 + _PAD  # face centre on the canvas (eyes ~ row 108, mouth ~ row 144)

_HAIR_RGB = {"Black_Hair": (28, 22, 22), "Blond_Hair": (232, 200, 118), "Brown_Hair": (112, 70, 38),
             "Gray_Hair": (178, 178, 182), "other": (168, 62, 28)}  # "other" is red/auburn, unlabelled like CelebA
_PALE_SKIN = (250, 228, 214)
_LIGHT_SKIN, _DARK_SKIN = (220, 176, 146), (112, 74, 50)
_IRIS_RGB = ((70, 45, 25), (60, 100, 150), (70, 110, 70), (35, 30, 30))


@dataclass(frozen=True)
class Face:
    """What one image shows: the identity's fixed look plus this image's labels (`attrs`, CelebA's order)."""
    number: int  # file number (1-based)
    identity: int
    split: str  # "train" | "valid" | "test"
    attrs: tuple[bool, ...]
    half_width: float
    half_height: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    long_hair: bool
    eye_dx: float  # half the distance between the eyes
    eye_y: float
    iris: tuple[int, int, int]
    mouth_y: float
    mouth_w: float
    beard_style: str  # "", "full", "goatee"

    def has(self, name: str) -> bool:
        return self.attrs[_INDEX[name]]

    @property
    def beard(self) -> tuple[int, int, int]:
        return _mix(self.hair, (0, 0, 0), 0.4)  # beards read darker than head hair, even blond ones


_INDEX = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _identity_traits(rng: np.random.Generator) -> tuple[dict[str, bool], dict]:
    """Labels that belong to a person (constant over their images) and the geometry/colours that show them."""
    male = rng.random() < 0.42
    young = rng.random() < 0.77
    a = {"Male": male, "Young": young, "Pale_Skin": rng.random() < 0.08}
    colour = rng.choice(HAIR_COLOURS, p=(0.24, 0.15, 0.20, 0.05, 0.36))
    if colour == "Gray_Hair" and young and rng.random() < 0.8:  # grey hair mostly on older faces
        a["Young"] = False
    a["Bald"] = male and rng.random() < (0.03 if a["Young"] else 0.25)
    for name in HAIR_COLOURS[:4]:
        a[name] = not a["Bald"] and colour == name
    a["Bangs"] = not a["Bald"] and rng.random() < (0.25 if not male else 0.08)
    a["Receding_Hairline"] = not a["Bald"] and not a["Bangs"] and rng.random() < 0.1
    waves = rng.random()
    a["Wavy_Hair"] = not a["Bald"] and waves < 0.32
    a["Straight_Hair"] = not a["Bald"] and 0.32 <= waves < 0.53
    bearded = male and rng.random() < 0.4
    a["No_Beard"] = not bearded
    beard_style = "" if not bearded else ("goatee" if rng.random() < 0.35 else "full")
    a["Goatee"] = beard_style == "goatee"
    a["Mustache"] = bearded and rng.random() < 0.5
    a["Sideburns"] = beard_style == "full" and rng.random() < 0.5
    a["5_o_Clock_Shadow"] = male and not bearded and rng.random() < 0.25
    for name, p in (("Arched_Eyebrows", 0.27), ("Attractive", 0.51), ("Big_Lips", 0.24), ("Big_Nose", 0.23),
                    ("Bushy_Eyebrows", 0.14), ("Chubby", 0.06), ("Double_Chin", 0.05), ("Narrow_Eyes", 0.12),
                    ("Oval_Face", 0.28), ("Pointy_Nose", 0.28)):
        a[name] = bool(rng.random() < p)

    skin = _PALE_SKIN if a["Pale_Skin"] else _mix(_LIGHT_SKIN, _DARK_SKIN, rng.random() ** 1.5)
    hair = _HAIR_RGB["Black_Hair" if a["Bald"] else colour]  # a bald head still has brows and maybe a beard
    look = {
        "half_width": rng.uniform(34, 39) + 5 * a["Chubby"] - 3 * a["Oval_Face"],
        "half_height": rng.uniform(46, 51) + 3 * a["Oval_Face"],
        "skin": _jitter(rng, skin, 5),
        "hair": _jitter(rng, hair, 10),
        "long_hair": not a["Bald"] and rng.random() < (0.85 if not male else 0.1),
        "eye_dx": rng.uniform(14.5, 18),
        "eye_y": rng.uniform(-11, -7),
        "iris": _IRIS_RGB[rng.integers(len(_IRIS_RGB))],
        "mouth_y": rng.uniform(25, 29),
        "mouth_w": rng.uniform(11, 14),
        "beard_style": beard_style,
    }
    return {k: bool(v) for k, v in a.items()}, look


def _image_traits(rng: np.random.Generator, person: dict[str, bool]) -> dict[str, bool]:
    """Labels that change from photo to photo: expression and accessories."""
    male = person["Male"]
    a = {"Smiling": rng.random() < 0.48, "Eyeglasses": rng.random() < 0.12, "Wearing_Hat": rng.random() < 0.08,
         "Blurry": rng.random() < 0.05, "Bags_Under_Eyes": rng.random() < 0.2, "Rosy_Cheeks": rng.random() < 0.07}
    a["Mouth_Slightly_Open"] = rng.random() < (0.6 if a["Smiling"] else 0.35)
    a["High_Cheekbones"] = rng.random() < (0.8 if a["Smiling"] else 0.1)
    a["Heavy_Makeup"] = not male and rng.random() < 0.65
    a["Wearing_Lipstick"] = not male and rng.random() < 0.8
    a["Wearing_Earrings"] = not male and rng.random() < 0.32
    a["Wearing_Necklace"] = not male and rng.random() < 0.2
    a["Wearing_Necktie"] = male and rng.random() < 0.17
    return {k: bool(v) for k, v in a.items()}


def plan(num_images: int, seed: int, images_per_identity: int) -> list[Face]:
    """Every image's labels and identity look, in file order (train, then valid, then test)."""
    if num_images < 1 or images_per_identity < 1:
        raise ValueError("num_images and images_per_identity must be >= 1")
    num_ids = math.ceil(num_images / images_per_identity)
    if num_ids < 3:
        raise ValueError(f"{num_images} images at {images_per_identity} per identity make {num_ids} identities; "
                         "train/valid/test need at least 3 (lower --images-per-identity)")
    rng = np.random.default_rng([seed, 0])
    # CelebA's identity numbers are 1..10,177 with gaps; draw ours the same way.
    numbers = rng.choice(np.arange(1, max(10_177, 2 * num_ids) + 1), num_ids, replace=False)
    people = [_identity_traits(rng) for _ in range(num_ids)]
    sizes = [images_per_identity] * num_ids
    sizes[-1] = num_images - images_per_identity * (num_ids - 1)
    held_out = max(1, round(0.1 * num_ids))
    order = rng.permutation(num_ids)
    split_members = {"train": order[2 * held_out:], "valid": order[:held_out], "test": order[held_out:2 * held_out]}

    faces = []
    for split, members in split_members.items():
        # Within a split CelebA interleaves identities, so shuffle the split's images before numbering them.
        owners = rng.permutation(np.repeat(members, [sizes[m] for m in members]))
        for owner in owners:
            person, look = people[owner]
            attrs = {**person, **_image_traits(rng, person)}
            faces.append(Face(number=len(faces) + 1, identity=int(numbers[owner]), split=split,
                              attrs=tuple(attrs[name] for name in ATTRIBUTE_NAMES), **look))
    return faces


def _ellipse(draw: ImageDraw.ImageDraw, x0: float, y0: float, x1: float, y1: float, **kw) -> None:
    """An ellipse in face coordinates (origin at the face centre)."""
    draw.ellipse((_CX + x0, _CY + y0, _CX + x1, _CY + y1), **kw)


def _poly(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], **kw) -> None:
    draw.polygon([(_CX + x, _CY + y) for x, y in points], **kw)


def _line(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], **kw) -> None:
    draw.line([(_CX + x, _CY + y) for x, y in points], **kw)


def _background(rng: np.random.Generator) -> Image.Image:
    """A smooth gradient between four random corner colours, on the padded canvas."""
    # Muted colours (random grey plus a little tint), closer to photo backgrounds than saturated primaries.
    grey = rng.uniform(40, 220, size=(2, 2, 1))
    corners = Image.fromarray(np.clip(grey + rng.uniform(-45, 45, size=(2, 2, 3)), 0, 255).astype(np.uint8))
    return corners.resize((WIDTH + 2 * _PAD, HEIGHT + 2 * _PAD), Image.Resampling.BILINEAR)


def _draw_hair_back(draw: ImageDraw.ImageDraw, f: Face) -> None:
    if f.has("Bald"):
        return
    w, h = f.half_width, f.half_height
    if f.long_hair:
        draw.rounded_rectangle((_CX - w - 12, _CY - h - 10, _CX + w + 12, _CY + h + 34), radius=w, fill=f.hair)
    else:
        _ellipse(draw, -w - 6, -h - 10, w + 6, h * 0.2, fill=f.hair)


def _draw_body(draw: ImageDraw.ImageDraw, f: Face, rng: np.random.Generator) -> None:
    w, h = f.half_width, f.half_height
    clothes = tuple(int(c) for c in rng.integers(15, 240, size=3))
    neck = _mix(f.skin, (0, 0, 0), 0.12)
    draw.rectangle((_CX - 0.45 * w, _CY + h - 25, _CX + 0.45 * w, _CY + h + 45), fill=neck)
    _ellipse(draw, -95, h + 30, 95, h + 150, fill=clothes)
    if f.has("Wearing_Necktie"):
        _poly(draw, [(-5, h + 30), (5, h + 30), (8, h + 75), (-8, h + 75)], fill=_jitter(rng, (120, 20, 30), 60))
    if f.has("Wearing_Necklace"):
        draw.arc((_CX - 0.45 * w, _CY + h - 5, _CX + 0.45 * w, _CY + h + 25), 20, 160, fill=(235, 205, 90), width=3)


def _draw_head(draw: ImageDraw.ImageDraw, f: Face) -> None:
    w, h = f.half_width, f.half_height
    ear = _mix(f.skin, (0, 0, 0), 0.08)
    for side in (-1, 1):
        _ellipse(draw, side * w - 6, f.eye_y - 4, side * w + 6, f.eye_y + 20, fill=ear)
        if f.has("Wearing_Earrings"):
            _ellipse(draw, side * w - 3, f.eye_y + 20, side * w + 3, f.eye_y + 26, fill=(240, 200, 60))
    _ellipse(draw, -w, -h, w, h, fill=f.skin)
    if f.has("Double_Chin"):
        draw.arc((_CX - 0.5 * w, _CY + h - 14, _CX + 0.5 * w, _CY + h - 2), 20, 160, fill=_mix(f.skin, (0, 0, 0), 0.2),
                 width=2)
    if f.has("5_o_Clock_Shadow"):
        draw.chord((_CX - w, _CY - h, _CX + w, _CY + h), 15, 165, fill=_mix(f.skin, (60, 60, 60), 0.35))
    if f.beard_style == "full":
        draw.chord((_CX - w - 1, _CY - h + 4, _CX + w + 1, _CY + h + 8), 12, 168, fill=f.beard)
    elif f.beard_style == "goatee":
        _ellipse(draw, -0.35 * w, f.mouth_y + 2, 0.35 * w, h + 7, fill=f.beard)
    if f.has("Sideburns"):
        for side in (-1, 1):
            _poly(draw, [(side * w, f.eye_y), (side * (w - 7), f.eye_y), (side * (w - 7), f.mouth_y),
                         (side * (w - 2), f.mouth_y)], fill=f.beard)


def _draw_eyes(draw: ImageDraw.ImageDraw, f: Face) -> None:
    eye_h = 2.0 if f.has("Narrow_Eyes") else 3.5
    brow = _mix(f.hair, (0, 0, 0), 0.45)
    for side in (-1, 1):
        x, y = side * f.eye_dx, f.eye_y
        if f.has("Heavy_Makeup"):
            _ellipse(draw, x - 8, y - 7, x + 8, y + 2, fill=_mix(f.skin, (110, 60, 110), 0.45))
        if f.has("Bags_Under_Eyes"):
            draw.arc((_CX + x - 7, _CY + y - 1, _CX + x + 7, _CY + y + 8), 20, 160, fill=_mix(f.skin, (0, 0, 0), 0.25),
                     width=2)
        _ellipse(draw, x - 7, y - eye_h, x + 7, y + eye_h, fill=(245, 245, 240))
        _ellipse(draw, x - 3.2, y - min(eye_h, 3.2), x + 3.2, y + min(eye_h, 3.2), fill=f.iris)
        _ellipse(draw, x - 1.3, y - 1.3, x + 1.3, y + 1.3, fill=(10, 10, 10))
        by, thick = y - 10, 5 if f.has("Bushy_Eyebrows") else 3
        if f.has("Arched_Eyebrows"):
            draw.arc((_CX + x - 9, _CY + by - 2, _CX + x + 9, _CY + by + 8), 195, 345, fill=brow, width=thick)
        else:
            _line(draw, [(x - 8, by + 1), (x + 8, by + 1)], fill=brow, width=thick)


def _draw_nose_mouth(draw: ImageDraw.ImageDraw, f: Face, rng: np.random.Generator) -> None:
    shade = _mix(f.skin, (0, 0, 0), 0.22)
    length, half = (17, 6) if f.has("Big_Nose") else (13, 4)
    tip = f.eye_y + 4 + length
    _poly(draw, [(0, f.eye_y + 4), (-half * (0.6 if f.has("Pointy_Nose") else 1), tip), (half, tip)],
          fill=_mix(f.skin, (0, 0, 0), 0.1))
    draw.arc((_CX - half - 2, _CY + tip - 4, _CX + half + 2, _CY + tip + 3), 10, 170, fill=shade, width=2)
    if f.has("Rosy_Cheeks"):
        for side in (-1, 1):
            _ellipse(draw, side * (f.eye_dx + 3) - 6, f.mouth_y - 16, side * (f.eye_dx + 3) + 6, f.mouth_y - 8,
                     fill=_mix(f.skin, (230, 90, 110), 0.45))
    natural = _mix(_mix(f.skin, (0, 0, 0), 0.35), (160, 30, 50), 0.4)  # darker than any skin, so mouths show
    lips = _jitter(rng, (190, 25, 55), 20) if f.has("Wearing_Lipstick") else natural
    thick = 5 if f.has("Big_Lips") else 3
    my, mw = f.mouth_y, f.mouth_w
    smiling, open_ = f.has("Smiling"), f.has("Mouth_Slightly_Open")
    if smiling:  # smiles are wider than the resting mouth
        mw *= 1.15
    if smiling and open_:  # a grin: dark lower half-ellipse with a row of teeth
        draw.chord((_CX - mw, _CY + my - 10, _CX + mw, _CY + my + 13), 0, 180, fill=(55, 12, 18), outline=lips, width=2)
        draw.rectangle((_CX - 0.65 * mw, _CY + my + 1, _CX + 0.65 * mw, _CY + my + 5), fill=(240, 238, 230))
    elif smiling:  # closed smile: a deep upward curve
        draw.arc((_CX - mw, _CY + my - 12, _CX + mw, _CY + my + 6), 12, 168, fill=lips, width=thick + 2)
    elif open_:
        _ellipse(draw, -0.6 * mw, my - 5, 0.6 * mw, my + 9, fill=(55, 12, 18), outline=lips, width=thick)
    else:
        _line(draw, [(-0.8 * mw, my), (0.8 * mw, my)], fill=lips, width=thick)
    if f.has("Mustache"):
        _poly(draw, [(-mw - 2, my - 3), (0, my - 7), (mw + 2, my - 3), (mw - 2, my - 9), (-mw + 2, my - 9)],
              fill=f.beard)


def _draw_hair_front(draw: ImageDraw.ImageDraw, f: Face) -> None:
    if f.has("Bald"):
        return
    w, h = f.half_width, f.half_height
    hairline = -h + (6 if f.has("Receding_Hairline") else 14)
    # The upper half of an ellipse whose flat lower edge is the hairline.
    draw.chord((_CX - w - 5, _CY - h - 12, _CX + w + 5, _CY + 2 * hairline + h + 12), 180, 360, fill=f.hair)
    for side in (-1, 1):  # temples
        _poly(draw, [(side * (w + 5), hairline), (side * (w - 6), hairline), (side * (w - 2), f.eye_y - 4),
                     (side * (w + 4), f.eye_y - 4)], fill=f.hair)
    if f.has("Bangs"):  # a fringe down to just above the brows, with a jagged lower edge
        bottom, xs = f.eye_y - 15, np.linspace(-0.9 * w, 0.9 * w, 9)
        edge = [(x, bottom + (3 if i % 2 else -2)) for i, x in enumerate(xs)]
        _poly(draw, [(-w - 3, hairline - 6)] + edge + [(w + 3, hairline - 6)], fill=f.hair)


def _draw_accessories(draw: ImageDraw.ImageDraw, f: Face, rng: np.random.Generator) -> None:
    w, h = f.half_width, f.half_height
    if f.has("Wearing_Hat"):
        hat = tuple(int(c) for c in rng.integers(10, 230, size=3))
        draw.rounded_rectangle((_CX - w - 1, _CY - h - 24, _CX + w + 1, _CY - h + 10), radius=14, fill=hat)
        _ellipse(draw, -w - 16, -h + 3, w + 16, -h + 16, fill=_mix(hat, (0, 0, 0), 0.2))
    if f.has("Eyeglasses"):
        frame = _jitter(rng, (25, 22, 22), 15)
        lens = (25, 25, 35) if rng.random() < 0.3 else None  # some are sunglasses, as in CelebA
        round_lens, y = rng.random() < 0.5, f.eye_y
        for side in (-1, 1):
            box = (_CX + side * f.eye_dx - 11, _CY + y - 9, _CX + side * f.eye_dx + 11, _CY + y + 9)
            if round_lens:
                draw.ellipse(box, fill=lens, outline=frame, width=4)
            else:
                draw.rounded_rectangle(box, radius=5, fill=lens, outline=frame, width=4)
            _line(draw, [(side * (f.eye_dx + 10), y - 3), (side * (w + 1), y - 5)], fill=frame, width=3)
        _line(draw, [(-f.eye_dx + 10, y - 2), (f.eye_dx - 10, y - 2)], fill=frame, width=3)


_GY, _GX = np.mgrid[-1:1:HEIGHT * 1j, -1:1:WIDTH * 1j].astype(np.float32)
# One fixed noise field, cropped at a random offset per image: drawing fresh normals costs more than the drawing.
_NOISE = np.random.default_rng(12345).standard_normal((HEIGHT + 64, WIDTH + 64, 3), dtype=np.float32)


def render(face: Face, rng: np.random.Generator) -> Image.Image:
    """Draw one 178x218 RGB picture of `face`; `rng` supplies pose, lighting, background, colours, noise."""
    canvas = _background(rng)
    draw = ImageDraw.Draw(canvas)
    _draw_hair_back(draw, face)
    _draw_body(draw, face, rng)
    _draw_head(draw, face)
    _draw_eyes(draw, face)
    _draw_nose_mouth(draw, face, rng)
    _draw_hair_front(draw, face)
    _draw_accessories(draw, face, rng)

    # Pose: rotate/scale about the face centre and shift; PIL's affine maps output pixels to input pixels.
    angle, scale = math.radians(rng.uniform(-8, 8)), rng.uniform(0.93, 1.07)
    out_x, out_y = _CX - _PAD + rng.uniform(-5, 5), _CY - _PAD + rng.uniform(-5, 5)
    a, b = math.cos(angle) / scale, math.sin(angle) / scale
    coeffs = (a, b, _CX - a * out_x - b * out_y, -b, a, _CY + b * out_x - a * out_y)
    image = canvas.transform((WIDTH, HEIGHT), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    image = image.filter(ImageFilter.GaussianBlur(2.2) if face.has("Blurry") else ImageFilter.BoxBlur(0.5))

    # Lighting: contrast, brightness and a linear light gradient from a random side, then sensor noise.
    direction, strength, contrast = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.15), rng.uniform(0.85, 1.1)
    light = 1 + strength * (math.cos(direction) * _GX + math.sin(direction) * _GY)  # python floats keep float32
    offset = (128 - 128 * contrast + rng.uniform(-18, 18) + 0.5) * light  # +0.5: round, not truncate, below
    dy, dx = rng.integers(0, 64, size=2)
    # ((x - 128) * contrast + 128 + brightness) * light, in place: full-size temporaries cost page faults.
    pixels = np.asarray(image, dtype=np.float32)
    pixels *= (contrast * light)[..., None]
    pixels += offset[..., None]
    pixels += _NOISE[dy:dy + HEIGHT, dx:dx + WIDTH] * rng.uniform(1.5, 4)
    return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8))


@dataclass(frozen=True)
class _Chunk:
    seed: int
    index: int
    image_dir: Path
    faces: list[Face]


def _render_chunk(chunk: _Chunk) -> int:
    rng = np.random.default_rng([chunk.seed, 1 + chunk.index])  # [seed, 0] is the label plan's stream
    for face in chunk.faces:
        # Pillow's quality-75 4:2:0 JFIF is what CelebA's own files are (same quantisation tables).
        render(face, rng).save(chunk.image_dir / f"{face.number:06d}.jpg", "JPEG", quality=75)
        tick()
    return len(chunk.faces)


def _write_lines(path: Path, lines: list[str], end: str = "\r\n") -> None:
    path.write_bytes((end.join(lines) + end).encode("ascii"))


def _write_annotations(out: Path, faces: list[Face], spec: LayoutSpec) -> None:
    names = [f"{face.number:06d}.jpg" for face in faces]
    values = [[1 if v else -1 for v in face.attrs] for face in faces]
    partitions = [SPLIT_CODES[face.split] for face in faces]
    for path in (spec.attributes, spec.partitions, spec.identities):
        (out / path).parent.mkdir(parents=True, exist_ok=True)
    if spec.attributes.endswith(".csv"):  # Kaggle's CSVs: an image_id header line, LF line ends
        rows = [",".join([name, *map(str, row)]) for name, row in zip(names, values)]
        _write_lines(out / spec.attributes, [",".join(["image_id", *ATTRIBUTE_NAMES])] + rows, "\n")
        _write_lines(out / spec.partitions, ["image_id,partition"] + [f"{name},{code}" for name, code in
                                                                       zip(names, partitions)], "\n")
    else:
        # CelebA's spacing: one space after the name, then every further value right-aligned in 2 columns.
        rows = [f"{name} {row[0]}" + "".join(f" {v:2d}" for v in row[1:]) for name, row in zip(names, values)]
        _write_lines(out / spec.attributes, [str(len(faces)), " ".join(ATTRIBUTE_NAMES) + " "] + rows)
        _write_lines(out / spec.partitions, [f"{name} {code}" for name, code in zip(names, partitions)])
    if spec.name not in WITHOUT_IDENTITIES:
        _write_lines(out / spec.identities, [f"{name} {face.identity}" for name, face in zip(names, faces)])


def generate(out: Path, num_images: int = 6000, seed: int = 0, images_per_identity: int = 20,
             workers: int | None = None, layout: str = "torchvision", zip_images: bool = False) -> dict:
    """Write the synthetic dataset into `out` (new or empty) in `layout`, its images in a folder or (`zip_images`)
    a zip; returns image and identity counts per split."""
    out = Path(out)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; refusing to write a dataset into it")
    spec = LAYOUTS[layout]
    faces = plan(num_images, seed, images_per_identity)
    image_dir = out / ("img_align_celeba.partial" if zip_images else spec.image_folder)
    image_dir.mkdir(parents=True)
    chunks = [_Chunk(seed, i, image_dir, faces[i * CHUNK:(i + 1) * CHUNK])
              for i in range(math.ceil(len(faces) / CHUNK))]
    run_parallel(_render_chunk, chunks, len(faces), workers or os.cpu_count() or 1)
    if zip_images:
        write_image_zip(image_dir, out / spec.image_zip)
        shutil.rmtree(image_dir)
    # Annotations last: a folder without them is visibly unfinished rather than silently short of images.
    _write_annotations(out, faces, spec)
    summary = {"images": len(faces), "identities": len({f.identity for f in faces})}
    for split in SPLIT_CODES:
        summary[split] = {"images": sum(f.split == split for f in faces),
                          "identities": len({f.identity for f in faces if f.split == split})}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make-synthetic-celeba", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty)")
    parser.add_argument("--num-images", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images-per-identity", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--layout", choices=list(LAYOUTS), default="torchvision",
                        help="whose file layout to write (see shard_builder/layouts.py)")
    parser.add_argument("--zip", action="store_true", help="store the images as img_align_celeba.zip, not a folder")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    start = time.perf_counter()
    try:
        with console.status(f"drawing {args.num_images:,} faces"):
            summary = generate(args.out, args.num_images, args.seed, args.images_per_identity, args.workers,
                               args.layout, args.zip)
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        return 1
    seconds = time.perf_counter() - start
    table = Table(title=f"synthetic CelebA in {args.out} ({seconds:.1f} s, {summary['images'] / seconds:,.0f} img/s)")
    for column in ("split", "images", "identities"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in SPLIT_CODES:
        table.add_row(split, f"{summary[split]['images']:,}", f"{summary[split]['identities']:,}")
    table.add_row("all", f"{summary['images']:,}", f"{summary['identities']:,}", style="bold")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
