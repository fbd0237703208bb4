"""`build-shards`: build (or `--verify`) the 64x64 WebDataset shards of a CelebA root."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from common.errors import UserError, report_user_error
from shard_builder import format as fmt
from shard_builder.build import BuildOptions, build
from shard_builder.verify import verify


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="build-shards", description=__doc__)
    parser.add_argument("--root", type=Path, help="CelebA folder holding img_align_celeba/ (or its parent)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty)")
    parser.add_argument("--encoding", choices=fmt.ENCODINGS, default="raw",
                        help="raw uint8 (lossless, default: see README for the measurement) or jpg")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--crop", choices=sorted(fmt.CROPS), default="center")
    parser.add_argument("--samples-per-shard", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the within-split shuffle")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable/missing/wrong-size images and list them in dataset.json")
    parser.add_argument("--verify", action="store_true",
                        help="re-read OUT and check it; with --root also compare every member to a fresh build")
    args = parser.parse_args(argv)
    if not args.verify and args.root is None:
        parser.error("--root is required to build")
    return args


def _progress(console: Console, label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                    TimeRemainingColumn(), console=console, transient=False)


def _run_with_progress(console: Console, label: str, work):
    with _progress(console, label) as bar:
        task = bar.add_task(label, total=None, rate="")

        def update(done: int, total: int) -> None:
            elapsed = bar.tasks[0].elapsed or 1e-9
            bar.update(task, completed=done, total=total, rate=f"{done / elapsed:,.0f} img/s")

        return work(update)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.verify:
            counts = _run_with_progress(console, "verify", lambda update: verify(args.out, args.root, args.workers, update))
            console.print(f"[green]OK[/green] {args.out}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
                          + (" (byte-identical to a fresh build)" if args.root else ""))
            return 0
        options = BuildOptions(encoding=args.encoding, jpeg_quality=args.jpeg_quality, crop=args.crop,
                               samples_per_shard=args.samples_per_shard, seed=args.seed, workers=args.workers,
                               skip_bad=args.skip_bad)
        summary = _run_with_progress(console, "build", lambda update: build(args.root, args.out, options, update))
    except UserError as err:  # BuildError, AnnotationError
        return report_user_error(err)
    table = Table(title=f"{args.out} ({options.encoding}, crop {options.crop})")
    for column in ("split", "images", "shards", "MiB", "bytes/image"):
        table.add_column(column, justify="right" if column != "split" else "left")
    dataset = summary.dataset
    for split in fmt.SPLITS:
        count, size = dataset["counts"][split], summary.bytes_per_split[split]
        table.add_row(split, f"{count:,}", str(len(dataset["shards"][split])), f"{size / 2**20:,.1f}",
                      f"{size / count:,.0f}")
    console.print(table)
    total = sum(dataset["counts"].values())
    console.print(f"{total:,} images in {summary.seconds:.1f} s ({total / summary.seconds:,.0f} img/s)"
                  + (f"; [yellow]{len(dataset['skipped'])} bad image(s) skipped[/yellow], listed in dataset.json"
                     if dataset["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
