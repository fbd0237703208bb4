"""The 40-attribute CelebA classifiers that steer (the *guide*) and score (the *judge*) latent edits.

    python -m edit.classifier --shards shards --out runs/guide --arch cnn --width 32 --seed 0
    python -m edit.classifier --shards shards --out runs/judge --arch resnet --width 24 --seed 1

Two small GroupNorm + SiLU conv nets on 64x64 images, differentiable w.r.t. the input so the guide's gradient
can flow into the VAE latent. They differ in architecture, width, seed and data order on purpose: the judge
must not share the guide's blind spots, so an edit that only fools the guide does not count.

- `cnn`: a plain stack (two 3x3 convs per resolution, the first strided);
- `resnet`: pre-activation residual blocks (two per resolution, the second strided).

Both flatten their 4x4 map into the linear head, so they know *where* a feature is.

Inputs are in the model range [-1, 1] (`model.to_model_range`), the range the VAE decoder writes, so
`classifier(vae.decode(z)[0])` needs no conversion. Training augments with horizontal flips, shifts of up
to 3 pixels and, on half the images, a Gaussian blur: the classifiers mostly look at VAE outputs, which are
blurrier than photographs (`--blur 0` switches it off). A folder holds `classifier.safetensors` and
`classifier.json` (architecture, attribute names, image size, per-attribute test accuracy), the same
convention as `train.checkpoint` for the VAE.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from safetensors.torch import save_file

from model import to_model_range
from model.layers import num_groups
from train.checkpoint import CheckpointError, load_weights

WEIGHTS = "classifier.safetensors"
META = "classifier.json"
ARCHS = ("cnn", "resnet")

console = Console()


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- checkpoint I/O


def save_classifier(folder: Path, classifier: AttributeClassifier, meta: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}, folder / WEIGHTS)
    (folder / META).write_text(json.dumps({"config": classifier.cfg.to_dict(), **meta}, indent=2) + "\n")


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
    meta_path = folder / META
    if not meta_path.is_file():
        raise ClassifierError(f"{meta_path}: missing; cannot tell which architecture {folder / WEIGHTS} is")
    try:
        meta = json.loads(meta_path.read_text())
        return ClassifierConfig(**meta["config"]), meta
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ClassifierError(f"{meta_path}: not a classifier config this code understands ({err})") from None


def load_classifier(path: Path | str, device: torch.device | str = "cpu") -> tuple[AttributeClassifier, dict]:
    """Rebuild the classifier a folder describes and load its weights: (classifier in eval mode, frozen; meta)."""
    folder = resolve_classifier_folder(path)
    cfg, meta = read_classifier_config(folder)
    classifier = AttributeClassifier(cfg)
    load_weights(classifier, folder / WEIGHTS, folder / META, ClassifierError)
    return classifier.to(device).eval().requires_grad_(False), meta


# ----------------------------------------------------------------------------- training


def augment(x: torch.Tensor, generator: torch.Generator, blur: float) -> torch.Tensor:
    """Random horizontal flip, shift by up to 3 pixels (reflect padding), and Gaussian blur (sigma uniform in
    [0, blur]) on half the images; x in [-1, 1], on its device."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = 3
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator, device=x.device).tolist()
    x = padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]  # one shift per batch: cheap, still decorrelating
    if blur > 0:
        sigma = float(torch.rand((), generator=generator, device=x.device)) * blur
        if sigma > 0.3:
            radius = max(1, math.ceil(2.5 * sigma))
            t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
            kernel = torch.exp(-0.5 * (t / sigma) ** 2)
            kernel = (kernel / kernel.sum()).repeat(3, 1)
            half = torch.rand(b, generator=generator, device=x.device) < 0.5
            blurred = F.pad(x, (radius, radius, radius, radius), mode="reflect")
            blurred = F.conv2d(blurred, kernel[:, None, None, :], groups=3)
            blurred = F.conv2d(blurred, kernel[:, None, :, None], groups=3)
            x = torch.where(half[:, None, None, None], blurred, x)
    return x


@torch.no_grad()
def evaluate(classifier: AttributeClassifier, loader, device) -> dict:
    """Per-attribute accuracy and BCE over a split (padding masked out)."""
    classifier.eval()
    correct = torch.zeros(len(classifier.cfg.attribute_names), dtype=torch.float64, device=device)
    bce, count = 0.0, 0
    loader.set_epoch(0)
    for batch in loader:
        logits = classifier(to_model_range(batch.images))[batch.mask]
        labels = batch.attributes[batch.mask].float()
        correct += ((logits > 0).float() == labels).double().sum(0)
        bce += float(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
        count += len(labels)
    return {"accuracy": (correct / count).tolist(), "bce": bce / (count * len(correct)), "images": count}


def train_classifier(shards: Path, out: Path, arch: str = "cnn", width: int = 32, epochs: int = 8,
                     batch_size: int = 32, lr: float = 3e-3, seed: int = 0, blur: float = 1.5,
                     device: torch.device | str | None = None, log=console.print) -> dict:
    """Train on `shards/train`, pick nothing on test (the last epoch is kept), report on `shards/test`."""
    from loaders import make_loader

    shards, out = Path(shards), Path(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    train = make_loader("resident", shards / "train", batch_size, device, seed=seed, shuffle=True, drop_last=True)
    test = make_loader("resident", shards / "test", 256, device, shuffle=False, drop_last=False)
    names = train.split.attribute_names
    image_size = int(train.split.dataset.get("image_size", 64))
    classifier = AttributeClassifier(ClassifierConfig(arch, width, image_size, names)).to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * len(train)
    warmup = min(50, total // 10)
    def schedule(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator(device).manual_seed(seed)
    log(f"classifier {arch} width {width}: {sum(p.numel() for p in classifier.parameters()) / 1e6:.2f} M params, "
        f"{len(train.split)} train images, {epochs} epochs of {len(train)} steps, device {device}")
    started = time.perf_counter()
    for epoch in range(epochs):
        classifier.train()
        train.set_epoch(epoch)
        running = 0.0
        for batch in train:
            x = augment(to_model_range(batch.images), generator, blur)
            loss = F.binary_cross_entropy_with_logits(classifier(x), batch.attributes.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach())
        log(f"epoch {epoch}: train BCE {running / len(train):.4f} ({time.perf_counter() - started:.0f} s)")
    report = evaluate(classifier, test, device)
    base_rate = test.split.attributes.mean(0)
    majority = [float(max(p, 1 - p)) for p in base_rate]
    meta = {"seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "blur": blur,
            "shards": str(shards), "train_images": len(train.split), "train_seconds": time.perf_counter() - started,
            "test": {"images": report["images"], "bce": report["bce"],
                     "mean_accuracy": sum(report["accuracy"]) / len(names),
                     "mean_majority_accuracy": sum(majority) / len(names),
                     "accuracy": dict(zip(names, report["accuracy"])),
                     "majority_accuracy": dict(zip(names, majority))}}
    save_classifier(out, classifier.eval(), meta)
    (out / "test_accuracy.json").write_text(json.dumps(meta["test"], indent=2) + "\n")
    return meta


def accuracy_table(meta: dict, title: str) -> Table:
    test = meta["test"]
    table = Table(title=title)
    for column in ("attribute", "test accuracy", "majority class", "gain"):
        table.add_column(column, justify="left" if column == "attribute" else "right")
    for name, accuracy in test["accuracy"].items():
        majority = test["majority_accuracy"][name]
        table.add_row(name, f"{accuracy:.3f}", f"{majority:.3f}", f"{accuracy - majority:+.3f}")
    table.add_row("[bold]mean[/bold]", f"{test['mean_accuracy']:.3f}", f"{test['mean_majority_accuracy']:.3f}",
                  f"{test['mean_accuracy'] - test['mean_majority_accuracy']:+.3f}")
    return table


def main(argv: list[str] | None = None) -> int:
    from shard_builder.build import BuildError

    parser = argparse.ArgumentParser(prog="python -m edit.classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True, help="build-shards output (train/ and test/ inside)")
    parser.add_argument("--out", required=True, help="folder for classifier.safetensors/.json and test_accuracy.json")
    parser.add_argument("--arch", default="cnn", choices=ARCHS)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--blur", type=float, default=1.5, help="max sigma of the blur augmentation (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.epochs < 1 or args.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be >= 1")
        meta = train_classifier(Path(args.shards), Path(args.out), args.arch, args.width, args.epochs,
                                args.batch_size, args.lr, args.seed, args.blur, "cpu" if args.cpu else None)
    except (BuildError, ValueError) as err:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 1
    console.print(accuracy_table(meta, f"{args.arch} width {args.width} seed {args.seed}: test accuracy "
                                       f"({meta['test']['images']} images)"))
    console.print(f"wrote {Path(args.out) / WEIGHTS}, {Path(args.out) / META}, {Path(args.out) / 'test_accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
