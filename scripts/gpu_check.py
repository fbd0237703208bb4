"""The GPU path end to end on its own data: what `scripts/gpu_check.sh` runs (see there for the machine it expects).

Steps: synthetic CelebA -> raw and JPEG shards -> one timed epoch of each loader that imports here (the others are
named with the reason) -> a train split of CelebA's size (the synthetic train shards repeated) -> `train/run.py`
for one epoch with the device's defaults (on CUDA: compiled, bf16) -> `python -m eval` and `bonus_1.py` on the
checkpoint -> `gpu_check.json` and the figures in --out (at most 8 files).

    python3 scripts/gpu_check.py --out /tmp/gpu_check                                  # the check, on a GPU
    python3 scripts/gpu_check.py --out /tmp/c --cpu --images 1600 --synthetic-images 600 --preset tiny  # its proof
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from common.nvidia import listed_gpus  # noqa: E402

CELEBA_TRAIN = 162_770  # images in CelebA's train split
LOADER_BATCH = 256  # the loader timings' batch (loaders.bench's default)
PACKAGES = {"resident": "torch", "webdataset": "webdataset", "dali": "nvidia.dali"}
console = Console()


def make_shards(work: Path, images: int) -> dict[str, Path]:
    """Synthetic CelebA and its raw and JPEG builds (1,000 samples per shard: the repeat is in whole shards)."""
    from shard_builder.build import BuildOptions, build
    from shard_builder.synthetic import generate

    root = work / "synthetic" / "celeba"
    started = time.perf_counter()
    generate(root, num_images=images, seed=0)
    console.print(f"{images:,} synthetic images in {time.perf_counter() - started:.1f} s")
    builds = {}
    for encoding in ("raw", "jpg"):
        started = time.perf_counter()
        builds[encoding] = work / f"shards-{encoding}"
        build(root, builds[encoding], BuildOptions(encoding=encoding, samples_per_shard=1000))
        console.print(f"{encoding} shards in {time.perf_counter() - started:.1f} s")
    return builds


def repeat_train_split(build: Path, out: Path, images: int) -> int:
    """A build whose train split is `build`'s train shards repeated (symlinks) to at least `images` images, in whole
    shards; valid and test are `build`'s. Returns the train split's size."""
    from shard_builder.read import DATASET_JSON, MANIFEST

    dataset = json.loads((build / DATASET_JSON).read_text())
    manifest = pq.read_table(build / "train" / MANIFEST)
    names = manifest.column("shard").to_pylist()
    per_shard = {name: names.count(name) for name in dataset["shards"]["train"]}
    (out / "train").mkdir(parents=True)
    for split in ("valid", "test"):
        (out / split).symlink_to((build / split).resolve())
    shards, tables, count = [], [], 0
    while count < images:
        for name, rows in per_shard.items():
            if count >= images:
                break
            copy = f"train-{len(shards):06d}.tar"
            for suffix in (".tar", ".idx"):
                (out / "train" / copy).with_suffix(suffix).symlink_to((build / "train" / name).with_suffix(suffix))
            part = manifest.filter(pc.equal(manifest.column("shard"), name))
            tables.append(part.set_column(part.schema.get_field_index("shard"), "shard", pa.array([copy] * rows)))
            shards.append(copy)
            count += rows
    pq.write_table(pa.concat_tables(tables), out / "train" / MANIFEST)
    dataset["shards"]["train"], dataset["counts"]["train"] = shards, count
    (out / DATASET_JSON).write_text(json.dumps(dataset, indent=2) + "\n")
    return count


def time_loaders(builds: dict[str, Path], batch_size: int, device: torch.device) -> list[dict]:
    """One warm-up and one timed epoch of the synthetic train split per loader and encoding; a loader whose
    package is missing is named with the reason."""
    from loaders import default_workers, make_loader
    from loaders.bench import time_epoch

    rows = []
    for kind, encoding in [("resident", "raw"), ("webdataset", "raw"), ("webdataset", "jpg"), ("dali", "raw"),
                           ("dali", "jpg")]:
        try:
            loader = make_loader(kind, builds[encoding] / "train", batch_size, device, shuffle=True, drop_last=True,
                                 num_workers=default_workers())
            time_epoch(loader, 0)
            images, seconds = time_epoch(loader, 1)
        except ImportError as err:  # the loader imports its package when built
            reason = f"{PACKAGES[kind]} is not installed ({err})"
            rows.append({"loader": kind, "shards": encoding, "skipped": reason})
            console.print(f"  {kind:<10} {encoding:<4} skipped: {reason}")
            continue
        rows.append({"loader": kind, "shards": encoding, "img_per_s": images / seconds})
        console.print(f"  {kind:<10} {encoding:<4} {images / seconds:>10,.0f} img/s")
        del loader
    return rows


def training_figures(metrics: Path, batch_size: int) -> dict:
    """Throughput, data-wait share and compile time from the trainer's metrics.jsonl: the first log window holds
    the compilation, so the steady rate comes from the others and the compile time is what the first window took
    beyond that rate."""
    windows = [json.loads(line) for line in metrics.read_text().splitlines()]
    windows = [w for w in windows if w["kind"] == "step"]
    if not windows:  # fewer steps than one log window
        return {"img_per_s": None, "data_wait_share": None, "compile_s_estimate": None, "log_windows": 0}
    steps = [b["step"] - a["step"] for a, b in zip([{"step": 0}] + windows, windows)]
    seconds = [n * batch_size / w["images_per_s"] for n, w in zip(steps, windows)]
    steady = list(zip(steps[1:], seconds[1:], windows[1:])) or list(zip(steps, seconds, windows))
    rate = sum(n for n, _, _ in steady) * batch_size / sum(s for _, s, _ in steady)
    return {"img_per_s": rate,
            "img_per_s_windows_median": statistics.median(w["images_per_s"] for _, _, w in steady),
            "data_wait_share": sum(s * w["data_wait_share"] for _, s, w in steady) / sum(s for _, s, _ in steady),
            "compile_s_estimate": max(0.0, seconds[0] - steps[0] * batch_size / rate) if len(windows) > 1 else None,
            "log_windows": len(windows)}


@torch.no_grad()
def mean_face_psnr(run: Path, train_split: Path, device: torch.device, seed: int = 0) -> dict:
    """PSNR to the train split's mean image of 64 prior samples at temperature 0.2, and of decode(0) (as eval's
    sample-quality section computes them, which needs a judge classifier)."""
    from eval.sample_quality import MEAN_FACE_SAMPLES, split_mean_image
    from model import psnr_db, to_uint8
    from train.checkpoint import load_vae

    vae, _ = load_vae(run, device)
    mean = split_mean_image(train_split).to(device)
    cold = to_uint8(vae.sample(MEAN_FACE_SAMPLES, 0.2, torch.Generator(device).manual_seed(seed))).double()
    zero = to_uint8(vae.decode(torch.zeros(1, vae.cfg.latent_dim, device=device))[0]).double()
    return {"mean_face_psnr_t0.2": float(psnr_db((cold - mean).square().mean())),
            "mean_face_psnr_decode_zero": float(psnr_db((zero - mean).square().mean()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="gpu_check.json and the figures (at most 8 files)")
    parser.add_argument("--work", type=Path, help="data, shards and the run (default: a folder beside --out)")
    parser.add_argument("--images", type=int, default=CELEBA_TRAIN, help="train split size of the one epoch")
    parser.add_argument("--synthetic-images", type=int, default=20_000, help="synthetic images generated")
    parser.add_argument("--preset", default="gpu", help="the network trained")
    parser.add_argument("--batch-size", type=int, help="default: the trainer's")
    parser.add_argument("--cpu", action="store_true", help="prove the check on the CPU (with small sizes)")
    args = parser.parse_args(argv)
    from eval.cli import main as eval_main
    from bonus_1 import main as bonus_main
    from train.run import main as train_main

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    work = args.work or args.out.parent / f"{args.out.name}-work"
    if work.exists():
        shutil.rmtree(work)
    args.out.mkdir(parents=True, exist_ok=True)
    gpus = listed_gpus()
    result: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})",
                    "cpus": os.cpu_count(), "driver": gpus[0].driver if gpus else None, "torch": torch.__version__,
                    "torch_cuda": torch.version.cuda, "preset": args.preset, "steps_s": {}}
    started = time.perf_counter()

    def step_done(name: str, since: float) -> float:
        result["steps_s"][name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    console.rule("data")
    builds = make_shards(work, args.synthetic_images)
    celeba_size = work / "shards-celeba-size"
    result["train_images"] = repeat_train_split(builds["raw"], celeba_size, args.images)
    console.print(f"train split of {result['train_images']:,} images: the synthetic train shards repeated")
    since = step_done("data", started)
    console.rule("loaders")
    synthetic_train = json.loads((builds["raw"] / "dataset.json").read_text())["counts"]["train"]
    result["loaders"] = time_loaders(builds, min(LOADER_BATCH, synthetic_train), device)
    since = step_done("loaders", since)

    console.rule("train: one epoch")
    run = work / "run"
    flags = ["--shards", str(celeba_size), "--out", str(run), "--epochs", "1", "--preset", args.preset]
    flags += (["--batch-size", str(args.batch_size)] if args.batch_size else []) + (["--cpu"] if args.cpu else [])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if train_main(flags) != 0:
        return 1
    summary = json.loads((run / "train_summary.json").read_text())
    batch_size = json.loads((run / "config.json").read_text())["batch_size"]
    result |= {"train_flags": flags[4:], "batch_size": batch_size, "compiled": summary["compiled"],
               "mixed_precision": summary["mixed_precision"], "steps": summary["step"],
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
               **training_figures(run / "metrics.jsonl", batch_size)}
    # The whole epoch as run (compilation, validation, figures, checkpoints included), and at the steady rate.
    result |= {"epoch_s": summary["train_seconds"],
               "epoch_s_steady": result["train_images"] / result["img_per_s"] if result["img_per_s"] else None}
    since = step_done("train", since)

    console.rule("eval and bonus_1")
    test, reports = celeba_size / "test", work / "eval"
    cpu_flag = ["--cpu"] if args.cpu else []
    if eval_main(["--checkpoint", str(run), "--shards", str(test), "--out", str(reports), *cpu_flag]) != 0:
        return 1
    if bonus_main(["--checkpoint", str(run), "--shards", str(test), "--out", str(reports), *cpu_flag]) != 0:
        return 1
    metrics = json.loads((reports / "eval-test.json").read_text())["metrics"]
    harmonic = json.loads((reports / "bonus_1-test.json").read_text())["metrics"]
    result |= {"test_bpd": metrics["bpd"], "test_psnr": metrics["psnr"], "harmonic": harmonic["harmonic"],
               **mean_face_psnr(run, builds["raw"] / "train", device)}
    step_done("eval", since)
    result["total_s"] = round(time.perf_counter() - started, 1)

    figures = run / "figures"
    for pattern in ("samples_epoch*.png", "reconstructions_epoch*.png", "interpolation_epoch*.png", "loss_curves.png"):
        found = sorted(figures.glob(pattern))
        if found:
            shutil.copy(found[-1], args.out / found[-1].name)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    console.print(json.dumps({k: v for k, v in result.items() if k != "loaders"}, indent=1))
    console.print(f"[green]wrote[/green] {args.out / 'gpu_check.json'} and the figures "
                  f"({math.ceil(result['total_s'])} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
