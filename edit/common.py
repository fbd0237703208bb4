"""What the three edits share: loading and cross-checking the VAE, the two classifiers and the shards; latents
of a split and their principal axes; the settings every edit has (subjects, seed) and subject choice; attribute
names; and the measurements every edit reports.

Every measurement compares an edit with the subject's *reconstruction* dec(mu), not with the photograph: the
VAE's own blur is not the edit's doing, so "how much else changed" is judged against what the VAE gives back
without editing.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from common.errors import UserError
from model import VAE, psnr_db, to_uint8
from model.classifier import AttributeClassifier, load_classifier, read_classifier_config, resolve_classifier_folder
from model.io import MODEL_WEIGHTS
from shard_builder.read import DATASET_JSON, Split, attribute_index, load_dataset_json, open_split
from train.checkpoint import load_vae, resolve_vae_folder


GRID_SCALE = 2  # edit grids are drawn at twice the pixel size: 64x64 faces are too small to judge at 1x


class EditError(UserError):
    """Unusable input for an edit (unknown attribute, too few images, mismatched models); names the value/file."""


# ----------------------------------------------------------------------------- attributes and changes


@dataclass(frozen=True)
class Change:
    attribute: str
    index: int
    target: int  # 1 = add the attribute, 0 = remove it

    @property
    def label(self) -> str:
        return f"{'add' if self.target else 'remove'} {self.attribute}"

    @property
    def slug(self) -> str:
        return f"{'add' if self.target else 'remove'}_{self.attribute}"


def parse_changes(spec: str, names) -> list[Change]:
    """`add:Eyeglasses,remove:Smiling` (or `+Eyeglasses,-Smiling`, which needs `--changes=...` on a shell)."""
    changes = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if ":" in item:
            verb, _, name = item.partition(":")
        elif item[0] in "+-":
            verb, name = {"+": "add", "-": "remove"}[item[0]], item[1:]
        else:
            raise EditError(f"change {item!r}: write add:NAME or remove:NAME (or +NAME / -NAME)")
        if verb.lower() not in ("add", "remove"):
            raise EditError(f"change {item!r}: {verb!r} is neither add nor remove")
        index = attribute_index(name.strip(), names, EditError)
        changes.append(Change(names[index], index, int(verb.lower() == "add")))
    if not changes:
        raise EditError(f"--changes {spec!r}: no change given")
    return changes


def parse_ints(spec: str, what: str) -> list[int]:
    try:
        return [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise EditError(f"{what} {spec!r}: expected comma-separated integers") from None


# ----------------------------------------------------------------------------- models and data


@dataclass
class EditContext:
    vae: VAE
    judge: AttributeClassifier
    guide: AttributeClassifier | None
    shards: Path
    names: list[str]
    device: torch.device
    vae_folder: Path
    judge_folder: Path
    guide_folder: Path | None
    batch_size: int = 64
    cache: bool = True
    _splits: dict = field(default_factory=dict)

    # Models. Decoder outputs are in the model range and unbounded; classifiers see them clamped to [-1, 1],
    # the range of any real image (the clamp is also what to_uint8 does before a PNG is written).
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)[0]

    @torch.no_grad()
    def decode_batched(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.decode(part) for part in z.split(self.batch_size)])

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,3,H,W] (any device) -> posterior means [N, d] on the context's device."""
        return self.vae.encode_means(images, self.batch_size)

    @torch.no_grad()
    def judge_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.sigmoid(self.judge(part.clamp(-1, 1))) for part in x.split(self.batch_size)])

    @torch.no_grad()
    def judge_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.judge.features(part.clamp(-1, 1)) for part in x.split(self.batch_size)])

    # Data.
    def split(self, name: str) -> Split:
        if name not in self._splits:
            self._splits[name] = open_split(self.shards / name)
        return self._splits[name]

    def images(self, name: str, rows: np.ndarray) -> torch.Tensor:
        """uint8 images of the given manifest rows of a split, on the device."""
        from loaders.contract import nchw
        from loaders.resident import decode_split

        key = ("images", name)
        if key not in self._splits:
            self._splits[key] = nchw(decode_split(self.split(name)))
        return self._splits[key][torch.as_tensor(np.asarray(rows), dtype=torch.long)].to(self.device)

    def latents(self, name: str, log=lambda message: None) -> torch.Tensor:
        """mu of every image of a split [N, d], in manifest order; cached beside the VAE weights, keyed by the
        weights and the split's keys, so the three commands encode the train split once."""
        if ("mu", name) in self._splits:
            return self._splits[("mu", name)]
        split = self.split(name)
        weights = self.vae_folder / MODEL_WEIGHTS
        stat = weights.stat()
        digest = hashlib.sha1("\n".join(split.keys.tolist()).encode()).hexdigest()[:16]
        tag = f"{stat.st_size}-{stat.st_mtime_ns}-{digest}"
        path = self.vae_folder / f"edit-latents-{name}-{digest}.safetensors"
        mu = None
        if self.cache and path.is_file():
            try:
                stored = load_file(path)
                if bytes(stored["tag"].numpy()).decode() == tag:
                    mu = stored["mu"].to(self.device)
            except Exception:  # a damaged cache is recomputed, never trusted
                mu = None
        if mu is None:
            log(f"encoding the {name} split ({len(split)} images)")
            mu = self.encode_images(self.images(name, np.arange(len(split))))
            if self.cache:
                try:
                    save_file({"mu": mu.cpu().contiguous(),
                               "tag": torch.frombuffer(bytearray(tag.encode()), dtype=torch.uint8)}, path)
                except OSError:
                    pass  # a read-only checkpoint folder only costs the re-encoding next time
        self._splits[("mu", name)] = mu
        return mu


def _load_checked(role: str, path: str, names: list[str], image_size: int, dataset_json: Path,
                  device: torch.device) -> tuple[AttributeClassifier, Path]:
    """Check a classifier's config against the shards (attribute names, image size), then load its weights."""
    folder = resolve_classifier_folder(path)
    cfg, _ = read_classifier_config(folder)
    if list(cfg.attribute_names) != list(names):
        ours, theirs = list(cfg.attribute_names), list(names)
        diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise EditError(f"{folder / 'classifier.json'}: the {role} classifier was trained on another attribute set "
                        f"than {dataset_json} ({len(ours)} vs {len(theirs)} names; first difference at position "
                        f"{diff}: {ours[diff] if diff < len(ours) else '-'!r} vs "
                        f"{theirs[diff] if diff < len(theirs) else '-'!r})")
    if cfg.image_size != image_size:
        raise EditError(f"{folder / 'classifier.json'}: the {role} classifier takes {cfg.image_size}x{cfg.image_size} "
                        f"images but the VAE and shards are {image_size}x{image_size}")
    return load_classifier(folder, device)[0], folder


def load_context(vae_path: str, judge_path: str, guide_path: str | None, shards: str, device: torch.device,
                 batch_size: int = 64, cache: bool = True) -> EditContext:
    """Load the VAE and the classifiers and check that they fit each other and the shards."""
    shards_path = Path(shards)
    if not (shards_path / DATASET_JSON).is_file() and (shards_path.parent / DATASET_JSON).is_file():
        raise EditError(f"--shards {shards_path}: this is one split; pass the shards root {shards_path.parent} "
                        f"(edits use its train split for directions and its test split for subjects)")
    dataset = load_dataset_json(shards_path)
    names = list(dataset["attribute_names"])
    image_size = int(dataset.get("image_size", 64))
    vae, _ = load_vae(vae_path, device)
    vae_folder = resolve_vae_folder(vae_path)
    if vae.cfg.image_size != image_size:
        raise EditError(f"{vae_folder / 'model.json'}: the VAE takes {vae.cfg.image_size}x{vae.cfg.image_size} images "
                        f"but {shards_path / DATASET_JSON} holds {image_size}x{image_size}")
    vae.requires_grad_(False)
    judge, judge_folder = _load_checked("judge", judge_path, names, image_size, shards_path / DATASET_JSON, device)
    guide, guide_folder = None, None
    if guide_path:
        if resolve_classifier_folder(guide_path).resolve() == judge_folder.resolve():
            raise EditError(f"--guide and --judge are the same classifier ({judge_folder}); the judge must be "
                            f"trained independently, or an edit that only fools the guide would count")
        guide, guide_folder = _load_checked("guide", guide_path, names, image_size, shards_path / DATASET_JSON, device)
    return EditContext(vae, judge, guide, shards_path, names, device, vae_folder, judge_folder, guide_folder,
                       batch_size, cache)


@dataclass
class EditSettings:
    """What every edit takes besides its own settings: how many test subjects, and the seed that draws them."""
    subjects: int = field(default=8, metadata={"help": "test images per grid"})
    seed: int = field(default=0, metadata={"help": "chooses the subjects"})


def choose_rows(candidates: np.ndarray, count: int, seed: int, what: str) -> np.ndarray:
    """`count` of the candidate manifest rows, drawn by seed (sorted draws keep grids stable across counts)."""
    candidates = np.asarray(candidates)
    if len(candidates) < count:
        raise EditError(f"only {len(candidates)} {what}; need {count} (lower --subjects)")
    return np.random.default_rng(seed).choice(candidates, count, replace=False)


# ----------------------------------------------------------------------------- measurements


def psnr(a_uint8: torch.Tensor, b_uint8: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (0..255 units, as eval reports reconstructions) and its MSE."""
    mse = (a_uint8.float() - b_uint8.float()).square().flatten(1).mean(1)
    return psnr_db(mse.clamp_min(1e-10))


def edit_metrics(before: torch.Tensor, after: torch.Tensor, p_before: torch.Tensor, p_after: torch.Tensor,
                 exclude: list[int] | None = None) -> dict:
    """How much an edit changed besides its purpose, against the reconstruction: pixels (uint8 images) and the
    judge's probabilities of every attribute not in `exclude` (mean |delta p| over attributes and images)."""
    keep = torch.ones(p_before.shape[1], dtype=torch.bool, device=p_before.device)
    if exclude:
        keep[exclude] = False
    rmse = (after.float() - before.float()).square().flatten(1).mean(1).sqrt()
    return {"psnr_to_reconstruction_db": float(psnr(before, after).clamp_max(99).mean()),
            "rmse_to_reconstruction": float(rmse.mean()),  # 0..255 units
            "other_attributes_mean_abs_change": float((p_after - p_before)[:, keep].abs().mean()),
            "other_attributes_max_abs_change": float((p_after - p_before)[:, keep].abs().max())}


def grey_change(a_uint8: torch.Tensor, b_uint8: torch.Tensor) -> torch.Tensor:
    """Per-pixel |a - b| in grey levels (0..255), averaged over the colour channels: [N, H, W]."""
    return (a_uint8.float() - b_uint8.float()).abs().mean(1)


REGION_LEVEL = 0.5  # a pixel is in a change map's region when it changes by half the map's robust maximum


def change_region(change_map: torch.Tensor) -> torch.Tensor:
    """The region of an [H, W] map of mean pixel change where the change happens: pixels at least REGION_LEVEL of
    the map's 99th percentile (a maximum that a few stray pixels do not set)."""
    return change_map >= REGION_LEVEL * torch.quantile(change_map.flatten().float(), 0.99)


def region_changes(before_uint8: torch.Tensor, after_uint8: torch.Tensor, region: torch.Tensor) -> dict:
    """Mean |pixel change| (grey levels) outside and inside a region [H, W] of the image: what an edit of the
    attribute living in the region should leave alone, and what it should change."""
    change = grey_change(before_uint8, after_uint8)
    return {"outside_region_mean_abs_change": float(change[:, ~region].mean()) if (~region).any() else 0.0,
            "inside_region_mean_abs_change": float(change[:, region].mean()) if region.any() else 0.0}


def attribute_region(ctx: "EditContext", attribute: int) -> torch.Tensor:
    """Where an attribute lives in the image [H, W] (bool): the change region of the difference between the mean
    train photo with the attribute and the mean one without (aligned faces put glasses, mouths and fringes at
    the same pixels)."""
    train = ctx.split("train")
    images = ctx.images("train", np.arange(len(train)))
    positive = torch.as_tensor(train.attributes[:, attribute].astype(bool), device=images.device)
    if positive.sum() == 0 or (~positive).sum() == 0:
        missing = "with" if not positive.sum() else "without"
        raise EditError(f"attribute {ctx.names[attribute]}: no train image {missing} it, so where it lives in the "
                        f"image is unknown")
    sums = torch.zeros(2, *images.shape[1:], device=images.device)
    for part, labels in zip(images.split(1024), positive.split(1024)):  # a float copy of the split is ~0.4 GB
        part = part.float()
        sums[0] += part[labels].sum(0)
        sums[1] += part[~labels].sum(0)
    difference = sums[0] / positive.sum() - sums[1] / (~positive).sum()
    return change_region(difference.abs().mean(0)).cpu()


def low_frequency_correlation(a_uint8: torch.Tensor, b_uint8: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Per-pair Pearson correlation of the grey images average-pooled to size x size: layout, pose and lighting,
    blind to colour shifts and fine detail."""
    def grey(x):
        g = x.float().mean(1, keepdim=True)
        g = torch.nn.functional.adaptive_avg_pool2d(g, size).flatten(1)
        g = g - g.mean(1, keepdim=True)
        return g / g.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return (grey(a_uint8) * grey(b_uint8)).sum(1)


def to_images(x: torch.Tensor) -> torch.Tensor:
    return to_uint8(x).cpu()


def blank(count: int, size: int = 64) -> torch.Tensor:
    return torch.full((count, 3, size, size), 255, dtype=torch.uint8)


def principal_axes(deviations: torch.Tensor, unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes of latents given as deviations [N, d] from the mean they vary around: the eigenvalues of
    their covariance (descending, clamped at 0) and the unit axes as the columns of [d, d]. The covariance
    divides by N - 1 when `unbiased`, else by N."""
    eigenvalues, vectors = torch.linalg.eigh(deviations.T @ deviations / (len(deviations) - int(unbiased)))
    order = torch.argsort(eigenvalues, descending=True)
    return eigenvalues[order].clamp_min(0), vectors[:, order]


def has_mean_difference(labels: np.ndarray) -> bool:
    """Whether an attribute's train labels have the 2 positives and 2 negatives a mean-difference direction needs."""
    positives = int(labels.astype(bool).sum())
    return positives >= 2 and len(labels) - positives >= 2


def mean_difference_direction(mu: torch.Tensor, labels: np.ndarray, attribute: str) -> torch.Tensor:
    """mean mu of the positives minus mean mu of the negatives (train split)."""
    positive = torch.as_tensor(labels.astype(bool), device=mu.device)
    if not has_mean_difference(labels):
        raise EditError(f"attribute {attribute}: {int(positive.sum())} positive and {int((~positive).sum())} negative "
                        f"train images; a mean-difference direction needs at least 2 of each")
    return mu[positive].mean(0) - mu[~positive].mean(0)


def fmt_float(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
