"""The whole chain in one command: data -> shards -> verify (training, eval and edits join as they land).

Uses the dataset at $CELEBA_ROOT when set, else makes the embedded synthetic CelebA. Every step writes
into `--work` and is skipped on a re-run when its output is complete; a failing step is named and the
finished ones are kept.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from shard_builder.build import DATASET_JSON, BuildOptions, build
from shard_builder.synthetic import generate
from shard_builder.verify import verify

console = Console()


def step_data(work: Path, synthetic_images: int) -> Path:
    if os.environ.get("CELEBA_ROOT"):
        root = Path(os.environ["CELEBA_ROOT"])
        console.print(f"[bold]data[/bold]: CelebA at {root}")
        return root
    root = work / "synthetic" / "celeba"
    if (root / "list_eval_partition.txt").is_file():
        console.print(f"[bold]data[/bold]: synthetic CelebA already at {root} (skipped)")
        return root
    if root.exists():  # an interrupted generation: its partial output is not worth keeping
        raise SystemExit(f"{root} exists but is incomplete; remove it and re-run")
    console.print(f"[bold]data[/bold]: making {synthetic_images:,} synthetic CelebA images in {root}")
    generate(root, num_images=synthetic_images, seed=0)
    return root


def step_shards(root: Path, work: Path) -> Path:
    out = work / "shards"
    if (out / DATASET_JSON).is_file():
        console.print(f"[bold]shards[/bold]: {out} already built (skipped)")
        return out
    console.print(f"[bold]shards[/bold]: build-shards --root {root} --out {out}")
    summary = build(root, out, BuildOptions())
    total = sum(summary.dataset["counts"].values())
    console.print(f"  {total:,} images in {summary.seconds:.1f} s")
    console.print("[bold]verify[/bold]: re-reading every shard against the manifest and the source images")
    counts = verify(out, root, workers=os.cpu_count() or 1)
    console.print("  OK: " + ", ".join(f"{split} {count:,}" for split, count in counts.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("runs/demo"))
    parser.add_argument("--synthetic-images", type=int, default=6000)
    args = parser.parse_args(argv)
    current = "data"
    try:
        root = step_data(args.work, args.synthetic_images)
        current = "shards"
        step_shards(root, args.work)
    except Exception as err:  # name the failing step; what finished stays on disk
        console.print(f"[red]demo failed at step '{current}':[/red] {err}")
        return 1
    console.print(f"[green]done[/green]: outputs in {args.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
