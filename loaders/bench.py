"""`python -m loaders.bench --root CELEBA`: every loader and the course's baseline loader side by side -> table + JSON.

Rates are images per second delivered as device batches (uint8 [B,3,64,64] on the device, synchronised on
CUDA), in training mode (shuffle, drop_last) over the train split:

- seeds (the course's baseline loader): `ImageFolder` over the JPEG folder + `Resize(64)`, `CenterCrop(64)`,
  `ToTensor`, `Normalize`, a DataLoader with one worker per core (persistent, as ours), pinned and copied to the
  device; timed from `iter()` over as many images as one epoch of the others (`--seeds-images` to change).
- webdataset and dali on raw and on JPEG shards, resident: whole epochs, each timed from `iter()` (shuffle
  buffer fill, DALI pipeline build included), after one untimed warm-up epoch (worker start-up).

Each loader is timed `--repeats` times and the best run is reported (the machine may be shared; the best
run is the least disturbed one, for every loader alike). On CUDA the dali rows are nvJPEG/GPU decoding
(`mixed`); without a GPU they are DALI's CPU-only pipeline.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common.device import default_device
from common.errors import UserError, report_user_error
from loaders import default_workers, make_loader
from shard_builder.annotations import AnnotationError
from shard_builder.build import BuildOptions, build
from shard_builder.layouts import find_layout
from shard_builder.read import load_dataset_json


GOALS = {"streaming": 25, "resident": 100}  # x the course's baseline loader, on the 2-core development machine


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seeds_loader(root: Path, folder: Path, batch_size: int, device: torch.device, workers: int):
    """The course's baseline pipeline; ImageFolder needs a class folder, so `folder` gets one linking to the images."""
    from torchvision import datasets, transforms

    images = find_layout(root).images
    if images.is_zip:
        raise AnnotationError(f"{images.path}: the baseline's ImageFolder reads a folder of JPEGs; extract this zip")
    folder.mkdir()
    (folder / "img_align_celeba").symlink_to(images.path.resolve())
    transform = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64), transforms.ToTensor(),
                                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    dataset = datasets.ImageFolder(str(folder), transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=device.type == "cuda", drop_last=True, persistent_workers=True)


def time_seeds(loader, images: int, device: torch.device) -> tuple[int, float]:
    count, started = 0, time.perf_counter()
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        count += len(x)
        if count >= images:
            break
    _sync(device)
    return count, time.perf_counter() - started


def time_epoch(loader, epoch: int) -> tuple[int, float]:
    loader.set_epoch(epoch)
    count, started = 0, time.perf_counter()
    for batch in loader:
        count += len(batch)
    _sync(loader.device)
    return count, time.perf_counter() - started


def build_shards(root: Path, cache: Path, encoding: str, console: Console) -> Path:
    out = cache / f"shards-{encoding}"
    if (out / "dataset.json").is_file():
        console.print(f"reusing {out}")
        return out
    console.print(f"building {encoding} shards of {root} into {out} ...")
    build(root, out, BuildOptions(encoding=encoding))
    return out


def run(args: argparse.Namespace, console: Console) -> dict:
    device = torch.device(args.device) if args.device else default_device()
    workers = args.num_workers or default_workers()
    results = {"machine": platform.node(), "cpus": os.cpu_count(), "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
               "torch": torch.__version__, "batch_size": args.batch_size, "num_workers": workers,
               "repeats": args.repeats, "load_average_before": os.getloadavg(), "rows": []}

    def record(name: str, encoding: str, runs: list[tuple[int, float]], setup_s: float | None, note: str = "") -> None:
        images, seconds = max(runs, key=lambda run: run[0] / run[1])
        row = {"loader": name, "shards": encoding, "images": images, "seconds": seconds,
               "img_per_s": images / seconds, "img_per_s_runs": [n / s for n, s in runs], "setup_s": setup_s,
               "note": note}
        results["rows"].append(row)
        console.print(f"  {name:<11} {encoding:<4} {row['img_per_s']:>10,.0f} img/s  (runs: "
                      + ", ".join(f"{rate:,.0f}" for rate in row["img_per_s_runs"]) + ")")

    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        builds = [Path(path) for path in args.shards] if args.shards else \
            [build_shards(args.root, args.cache or Path(tmp), encoding, console) for encoding in ("raw", "jpg")]
        encodings = {path: load_dataset_json(path)["encoding"] for path in builds}
        if args.root is not None:
            epoch_images = load_dataset_json(builds[0])["counts"]["train"] // args.batch_size * args.batch_size
            loader = seeds_loader(args.root, Path(tmp) / "imagefolder", args.batch_size, device, workers)
            time_seeds(loader, 2 * args.batch_size, device)  # warm-up: worker start-up
            runs = [time_seeds(loader, args.seeds_images or epoch_images, device) for _ in range(args.repeats)]
            record("seeds", "jpeg", runs, None, "torchvision ImageFolder")
            del loader
        dali_note = "GPU decode (mixed)" if device.type == "cuda" else "CPU-only pipeline"
        kinds = [(kind, path) for kind in ("webdataset", "dali") for path in builds] + [("resident", builds[0])]
        for kind, path in kinds:
            started = time.perf_counter()
            loader = make_loader(kind, path / "train", args.batch_size, device, seed=0, shuffle=True, drop_last=True,
                                 num_workers=workers)
            setup = time.perf_counter() - started
            time_epoch(loader, 0)  # warm-up: imports, page cache, DALI/CUDA initialisation
            runs = [time_epoch(loader, epoch) for epoch in range(1, args.repeats + 1)]
            record(kind, encodings[path], runs, setup, {"dali": dali_note, "resident": "device gathers"}.get(kind, ""))
            del loader
    results["load_average_after"] = os.getloadavg()
    seeds = next((row["img_per_s"] for row in results["rows"] if row["loader"] == "seeds"), None)
    for row in results["rows"]:
        row["x_seeds"] = row["img_per_s"] / seeds if seeds else None
    if seeds:
        streaming = max(row["x_seeds"] for row in results["rows"] if row["loader"] in ("webdataset", "dali"))
        resident = max(row["x_seeds"] for row in results["rows"] if row["loader"] == "resident")
        results["goals"] = {"best_streaming_x_seeds": streaming, "best_streaming_goal": GOALS["streaming"],
                            "resident_x_seeds": resident, "resident_goal": GOALS["resident"]}
    return results


def print_table(results: dict, console: Console) -> None:
    table = Table(title=f"loaders, train split, batch {results['batch_size']}, {results['num_workers']} workers, "
                        f"device {results['device']} ({results['cpus']} CPUs), best of {results['repeats']}")
    for column in ("loader", "shards", "images", "img/s", "x seeds", "setup s", "note"):
        table.add_column(column, justify="left" if column in ("loader", "shards", "note") else "right")
    for row in results["rows"]:
        table.add_row(row["loader"], row["shards"], f"{row['images']:,}", f"{row['img_per_s']:,.0f}",
                      "n/a" if row["x_seeds"] is None else f"{row['x_seeds']:,.1f}",
                      "" if row["setup_s"] is None else f"{row['setup_s']:.2f}", row["note"])
    console.print(table)
    console.print("setup s: make_loader (for resident: the one-time decode of the split into device memory)")
    console.print(f"load average before {results['load_average_before'][0]:.2f}, after "
                  f"{results['load_average_after'][0]:.2f} (1 min)")
    goals = results.get("goals")
    if goals:
        for name, key in (("best streaming loader", "best_streaming"), ("resident", "resident")):
            ratio, goal = goals[f"{key}_x_seeds"], goals[f"{key}_goal"]
            verdict = "[green]met[/green]" if ratio >= goal else "[red]missed[/red]"
            console.print(f"goal {name} >= {goal}x the baseline loader (seeds): {ratio:,.1f}x {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loaders.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path,
                        help="CelebA root: the course's baseline loader and the shards built from it")
    parser.add_argument("--shards", type=Path, nargs="+", help="existing build(s) to use instead of building")
    parser.add_argument("--cache", type=Path, help="keep the shards built from --root here (reused when complete)")
    parser.add_argument("--json", type=Path, default=Path("bench_results/loaders.json"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, help="workers / DALI threads (default: one per core)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per loader; the best is reported")
    parser.add_argument("--seeds-images", type=int, help="images per timed run of the baseline (default: one epoch "
                        "of the others)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    if args.root is None and not args.shards:
        parser.error("give --root (builds raw and jpg shards, runs the course's baseline loader) and/or --shards")
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # redirected (CI logs, BENCHMARKS.md): don't wrap the table at 80 columns
    try:
        results = run(args, console)
    except UserError as err:  # LoaderError, BuildError, AnnotationError
        return report_user_error(err)
    print_table(results, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
