"""The 40-attribute CelebA classifier: the guide and judge of latent edits, and a perceptual-loss network.

Two small GroupNorm + SiLU conv nets on 64x64 images in the model range [-1, 1] (the range the VAE decoder
writes, so `classifier(vae.decode(z)[0])` needs no conversion), differentiable w.r.t. the input:

- `cnn`: a plain stack (two 3x3 convs per resolution, the first strided);
- `resnet`: pre-activation residual blocks (two per resolution, the second strided).

A folder holds `classifier.safetensors` + `classifier.json` (`common.folders`, as the VAE's). Training is
`edit.classifier`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from common.folders import load_weights, read_meta, save_folder
from model.io import CheckpointError
from model.layers import num_groups

WEIGHTS = "classifier.safetensors"
META = "classifier.json"
ARCHS = ("cnn", "resnet")


class ClassifierError(CheckpointError):
    """A missing, incomplete or mismatched classifier checkpoint; the message names the file."""


@dataclass
class ClassifierConfig:
    arch: str = "cnn"
    width: int = 32  # channels at S/2; doubled at each of the 3 further downsamplings
    image_size: int = 64
    attribute_names: tuple[str, ...] = ()

    def __post_init__(self):
        self.attribute_names = tuple(self.attribute_names)
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.width < 4 or self.width % 4:
            raise ValueError(f"width must be a positive multiple of 4, got {self.width}")
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        if not self.attribute_names:
            raise ValueError("attribute_names must not be empty")

    def to_dict(self) -> dict:
        return asdict(self) | {"attribute_names": list(self.attribute_names)}


def _norm_act(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(num_groups(channels), channels), nn.SiLU())


class _ResBlock(nn.Module):
    """Pre-activation residual block; a strided 1x1 shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(_norm_act(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1),
                                    _norm_act(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.shortcut = nn.Identity() if (c_in, stride) == (c_out, 1) else nn.Conv2d(c_in, c_out, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.branch(x)


class AttributeClassifier(nn.Module):
    """x [B, 3, S, S] in [-1, 1] -> logits [B, num_attributes]; `features(x)` is the penultimate embedding.

    A strided stem (S/2: the full-resolution convs would cost most of the compute for little gain), three
    downsamplings to S/16, and the S/16 x S/16 map flattened into the linear head. No global pooling: where a
    feature is matters (dark frames around the eyes are glasses, dark hair above the brows is a fringe), and
    with a pooled head the nets spent hundreds of steps at the labels' base rates before learning anything.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.width * 2**i for i in range(4)]  # at S/2, S/4, S/8, S/16
        self.stem = nn.Conv2d(3, widths[0], 4, stride=2, padding=1)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            if cfg.arch == "cnn":
                layers += [_norm_act(c_in), nn.Conv2d(c_in, c_out, 3, 2, 1), _norm_act(c_out),
                           nn.Conv2d(c_out, c_out, 3, 1, 1)]
            else:
                layers += [_ResBlock(c_in, c_in, 1), _ResBlock(c_in, c_out, 2)]
        self.body = nn.Sequential(*layers, _norm_act(widths[-1]))
        side = cfg.image_size // 16
        self.embed_dim = widths[-1] * side * side
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(self.embed_dim, len(cfg.attribute_names)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x)).flatten(1)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map averaged over positions, [B, C]: a compact embedding for distances between sets
        of images (a Fréchet distance needs far more images than the flattened map has dimensions)."""
        return self.body(self.stem(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- checkpoint folder


def save_classifier(folder: Path, classifier: AttributeClassifier, meta: dict) -> None:
    save_folder(folder, WEIGHTS, META, classifier.state_dict(), {"config": classifier.cfg.to_dict(), **meta})


def resolve_classifier_folder(path: Path | str) -> Path:
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path
    if path.is_file() and path.name in (WEIGHTS, META):
        return path.parent
    raise ClassifierError(f"{path}: no {WEIGHTS} here; pass the folder `python -m edit.classifier --out` wrote")


def read_classifier_config(path: Path | str) -> tuple[ClassifierConfig, dict]:
    """The config and metadata of a classifier folder, without loading weights (to check it fits first)."""
    folder = resolve_classifier_folder(path)
    meta = read_meta(folder, WEIGHTS, META, ClassifierError)
    try:
        return ClassifierConfig(**meta["config"]), meta
    except (KeyError, TypeError, ValueError) as err:
        raise ClassifierError(f"{folder / META}: not a classifier config this code understands ({err})") from None


def load_classifier(path: Path | str, device: torch.device | str = "cpu") -> tuple[AttributeClassifier, dict]:
    """Rebuild the classifier a folder describes and load its weights: (classifier in eval mode, frozen; meta)."""
    folder = resolve_classifier_folder(path)
    cfg, meta = read_classifier_config(folder)
    classifier = AttributeClassifier(cfg)
    load_weights(classifier, folder / WEIGHTS, folder / META, ClassifierError)
    return classifier.to(device).eval().requires_grad_(False), meta
