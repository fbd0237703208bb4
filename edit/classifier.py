"""Train the 40-attribute classifiers that steer (the *guide*) and score (the *judge*) latent edits.

    python -m edit.classifier --shards shards --out runs/guide --arch cnn --width 32 --seed 0
    python -m edit.classifier --shards shards --out runs/judge --arch resnet --width 24 --seed 1

The network and its folder are `model.classifier`. Guide and judge differ in architecture, width, seed and data
order on purpose: the judge must not share the guide's blind spots, so an edit that only fools the guide does
not count. Training augments with horizontal flips, shifts of up to 3 pixels and, on half the images, a
Gaussian blur: the classifiers mostly look at VAE outputs, which are blurrier than photographs (`--blur 0`
switches it off).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from common.device import default_device
from common.errors import UserError, report_user_error
from model import to_model_range
from model.classifier import ARCHS, META, WEIGHTS, AttributeClassifier, ClassifierConfig, save_classifier
from train.objective import lr_factor

console = Console()


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
    device = torch.device(device) if device else default_device()
    torch.manual_seed(seed)
    train = make_loader("resident", shards / "train", batch_size, device, seed=seed, shuffle=True, drop_last=True)
    test = make_loader("resident", shards / "test", 256, device, shuffle=False, drop_last=False)
    names = train.split.attribute_names
    image_size = int(train.split.dataset.get("image_size", 64))
    classifier = AttributeClassifier(ClassifierConfig(arch, width, image_size, names)).to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * len(train)
    warmup = min(50, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step + 1, warmup, total, 0.0))
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
            raise UserError("--epochs and --batch-size must be >= 1")
        meta = train_classifier(Path(args.shards), Path(args.out), args.arch, args.width, args.epochs,
                                args.batch_size, args.lr, args.seed, args.blur, "cpu" if args.cpu else None)
    except UserError as err:  # BuildError, LoaderError
        return report_user_error(err)
    console.print(accuracy_table(meta, f"{args.arch} width {args.width} seed {args.seed}: test accuracy "
                                       f"({meta['test']['images']} images)"))
    console.print(f"wrote {Path(args.out) / WEIGHTS}, {Path(args.out) / META}, {Path(args.out) / 'test_accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
