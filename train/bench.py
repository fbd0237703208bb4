"""`python -m train.bench`: train-step throughput side by side in one run -> rich table + JSON.

Rows: the bare on-device step (one batch already on the device, the ceiling: forward, backward, AdamW) in eager
vs compiled, fp32 vs bf16, with its peak memory on CUDA; the trainer's real step on the same batch
(`train.step.TrainStep`: keyed noise, gradient clipping, fused AdamW with its device-side rate and skip flag,
EMA, running sums; DDP when launched on more than one process), timed in alternating blocks with the bare step
of its variant so that their ratio holds on a shared machine; then the step fed by each loader, with the share of wall time spent waiting for
data; then (`--epoch`, default on CUDA) one whole epoch of the train split, timed end to end. Every row gets a
warm-up (compilation happens there) before its timed steps, and CUDA is synchronised before each clock read.
On a GPU the defaults measure what the GPU path needs: the GPU recipe's preset, all four variants, a full epoch.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from accelerate import Accelerator, PartialState

from common.device import default_device
from loaders import LOADER_KINDS, make_loader
from loaders.contract import Batch
from model import create_vae
from model.noise import image_seeds
from train.objective import EMA, VAEObjective
from train.step import TrainStep, make_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(preset: str, device: torch.device, compiled: bool, bf16: bool):
    torch.manual_seed(0)
    vae = create_vae(preset).to(device)
    objective = VAEObjective(vae)
    module = torch.compile(objective) if compiled else objective
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    weight = torch.tensor(1.0, device=device)

    def step(images: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, *_ = module(images, weight)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_trainer_step(preset: str, compiled: bool, bf16: bool):
    """The trainer's step (what `train/run.py` runs per batch, DDP-wrapped on several processes) on a Batch."""
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no")
    torch.manual_seed(0)
    vae = create_vae(preset).to(accelerator.device)
    objective = VAEObjective(vae)
    module, optimizer = accelerator.prepare(torch.compile(objective) if compiled else objective,
                                            make_optimizer(vae, 1e-4, 0.01))
    train_step = TrainStep(vae, module, optimizer, EMA(vae, 0.999), accelerator, grad_clip=1.0)
    steps = itertools.count()

    def step(batch: Batch) -> None:
        seeds = image_seeds(batch.keys, 0, accelerator.device, epoch=0)  # hashed per step, as the trainer does
        train_step(batch.images, seeds, next(steps), 1.0, 1e-4)

    return step


def flops_per_image(preset: str, batch_size: int, device: torch.device) -> float:
    """Floating-point operations of one eager fp32 forward + backward of the objective, per image (counted by
    torch's FlopCounterMode: matmuls and convolutions, the bulk of the work)."""
    from torch.utils.flop_counter import FlopCounterMode

    objective = VAEObjective(create_vae(preset).to(device))
    images = torch.randint(0, 256, (batch_size, 3, 64, 64), dtype=torch.uint8, device=device)
    with FlopCounterMode(display=False) as counter:
        loss, *_ = objective(images, torch.tensor(1.0, device=device))
        loss.backward()
    return counter.get_total_flops() / batch_size


def time_steps(step, batches, steps: int, warmup: int, device: torch.device) -> dict:
    """Run warm-up + timed steps pulling images from `batches`; returns images/s, the data-wait share and, on
    CUDA, the peak memory allocated during the timed steps."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    waited, count, started = 0.0, 0, time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        images = next(iterator)
        waited += time.perf_counter() - before
        step(images)
        count += len(images)
    _sync(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": count / elapsed, "data_wait_share": waited / elapsed, "steps": steps, "peak_gib": peak,
            "images": count, "seconds": elapsed}


ALTERNATION = 5  # steps per block when two steps are timed in turns


def time_alternating(bare_block, trainer_block, steps: int, warmup: int) -> tuple[dict, dict]:
    """Two steps timed in alternating blocks (`*_block(warmup)` times ALTERNATION steps after `warmup` untimed
    ones), so a load that changes during the run (a shared machine) weighs on both alike: their ratio is the
    figure to read. Returns the two steps' images/s over all their blocks."""
    bare_block(warmup), trainer_block(warmup)
    totals = [[0, 0.0], [0, 0.0]]  # images, seconds
    for _ in range(max(1, steps // ALTERNATION)):
        for total, block in zip(totals, (bare_block, trainer_block)):
            result = block(0)
            total[0] += result["images"]
            total[1] += result["seconds"]
    return tuple({"images_per_s": images / seconds, "data_wait_share": 0.0, "steps": steps, "peak_gib": None}
                 for images, seconds in totals)


def time_epoch(step, loader, warmup_batches, device: torch.device) -> dict:
    """One whole epoch of `loader` (after a warm-up on `warmup_batches`), timed end to end."""
    for images in warmup_batches:
        step(images)
    _sync(device)
    loader.set_epoch(0)
    count, started = 0, time.perf_counter()
    for batch in loader:
        step(batch.images)
        count += len(batch)
    _sync(device)
    return {"epoch_images": count, "epoch_seconds": time.perf_counter() - started}


def repeat(images: torch.Tensor):
    while True:
        yield images


def loader_batches(kind: str, split: Path, batch_size: int, device: torch.device, workers: int):
    loader = make_loader(kind, split, batch_size, device, shuffle=True, drop_last=True, num_workers=workers)
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def loader_images(kind: str, split: Path, batch_size: int, device: torch.device, workers: int):
    return (batch.images for batch in loader_batches(kind, split, batch_size, device, workers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--preset", default=None, help="default: gpu (the GPU recipe's) on CUDA, tiny on the CPU")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loaders", default=",".join(LOADER_KINDS))
    parser.add_argument("--variants", default="eager-fp32,eager-bf16,compiled-fp32,compiled-bf16")
    parser.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=None,
                        help="also time one whole epoch of the train split (default: on CUDA)")
    parser.add_argument("--json", type=Path, default=Path("bench_results/train.json"))
    args = parser.parse_args(argv)
    device = default_device()
    args.preset = args.preset or ("gpu" if device.type == "cuda" else "tiny")
    console = Console()
    split = args.shards / "train"
    rows = []
    first_batch = next(loader_batches("resident", split, args.batch_size, device, 0))
    first = first_batch.images
    # The data path rows share one configuration: the best step variant for the machine.
    feed_variant = "compiled-bf16" if device.type == "cuda" else "eager-fp32"
    for variant in args.variants.split(","):
        compiled, bf16 = variant.startswith("compiled"), variant.endswith("bf16")
        console.print(f"[dim]on-device step, {variant} …")
        step = make_step(args.preset, device, compiled, bf16)
        rows.append({"feed": "on-device batch", "step": "bare", "variant": variant,
                     **time_steps(step, repeat(first), args.steps, args.warmup, device)})
    if feed_variant in args.variants.split(","):
        console.print(f"[dim]on-device trainer step beside the bare step, {feed_variant}, alternating …")
        compiled, bf16 = feed_variant.startswith("compiled"), feed_variant.endswith("bf16")
        bare_step = make_step(args.preset, device, compiled, bf16)
        trainer_step = make_trainer_step(args.preset, compiled, bf16)
        bare, trainer = time_alternating(
            lambda warmup: time_steps(bare_step, repeat(first), ALTERNATION, warmup, device),
            lambda warmup: time_steps(trainer_step, repeat(first_batch), ALTERNATION, warmup, device),
            args.steps, args.warmup)
        rows.append({"feed": "on-device batch", "step": "trainer", "variant": feed_variant, **trainer,
                     "vs_bare": trainer["images_per_s"] / bare["images_per_s"],
                     "bare_alternated_images_per_s": bare["images_per_s"]})
    flops = flops_per_image(args.preset, args.batch_size, device)
    for row in rows:
        row["gflops"] = row["images_per_s"] * flops / 1e9  # achieved, from the counted operations
    ceiling = next(r for r in rows if r["variant"] == feed_variant)["images_per_s"]
    for kind in args.loaders.split(","):
        console.print(f"[dim]{kind} loader, {feed_variant} …")
        step = make_step(args.preset, device, feed_variant.startswith("compiled"), feed_variant.endswith("bf16"))
        result = time_steps(step, loader_images(kind, split, args.batch_size, device, args.workers), args.steps,
                            args.warmup, device)
        rows.append({"feed": f"{kind} loader", "step": "bare", "variant": feed_variant, **result,
                     "vs_on_device": result["images_per_s"] / ceiling})
    epoch = None
    if args.epoch if args.epoch is not None else device.type == "cuda":
        console.print(f"[dim]one epoch of {split}, resident loader, {feed_variant} …")
        step = make_step(args.preset, device, feed_variant.startswith("compiled"), feed_variant.endswith("bf16"))
        loader = make_loader("resident", split, args.batch_size, device, shuffle=True, drop_last=True)
        epoch = {"variant": feed_variant, **time_epoch(step, loader, [first] * args.warmup, device)}
    table = Table(title=f"train step, preset {args.preset} ({flops / 1e9:.3f} GFLOP per image forward + backward), "
                        f"batch {args.batch_size}, {device.type}")
    for column in ("feed", "step", "variant", "img/s", "GFLOP/s", "data wait", "vs bare", "vs on-device",
                   "peak GiB"):
        table.add_column(column, justify="left" if column in ("feed", "step", "variant") else "right")
    for row in rows:
        table.add_row(row["feed"], row["step"], row["variant"], f"{row['images_per_s']:,.0f}",
                      f"{row['gflops']:,.1f}" if "gflops" in row else "", f"{100 * row['data_wait_share']:.1f}%",
                      f"{row['vs_bare']:.2f}" if "vs_bare" in row else "",
                      f"{row['vs_on_device']:.2f}" if "vs_on_device" in row else "",
                      f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "")
    console.print(table)
    if epoch:
        console.print(f"one epoch ({epoch['epoch_images']:,} images, resident loader, {epoch['variant']}): "
                      f"{epoch['epoch_seconds']:.1f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.node(), "device": str(device), "torch": torch.__version__,
                                     "processes": PartialState().num_processes,
                                     "preset": args.preset, "batch_size": args.batch_size, "gflop_per_image": flops / 1e9,
                                     "rows": rows, "epoch": epoch},
                                    indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
