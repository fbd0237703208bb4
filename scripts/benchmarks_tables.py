"""Regenerates BENCHMARKS.md's tables from the JSON the benchmarks write:

    python scripts/benchmarks_tables.py --loaders run1.json [run2.json ...] --train train.json --sweep DIR/sweep.json

`python -m loaders.bench --json`, `python -m train.bench --json` and `python -m eval.sweep` write those files.
Each table sits in BENCHMARKS.md between `<!-- table:NAME -->` and `<!-- end:NAME -->`; only the tables whose
JSON is given are replaced. Several loader runs give one column of rates per run, side by side.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def markdown(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, align, *rows))


def _joined(values: list[float | None], form: str) -> str:
    return " / ".join("" if v is None else format(v, form) for v in values)


def loaders_table(runs: list[dict]) -> str:
    """One row per loader and shard encoding: images per second and the ratio to the course's baseline, per run."""
    keys = list(dict.fromkeys((row["loader"], row["shards"]) for run in runs for row in run["rows"]))
    rows = []
    for loader, shards in keys:
        found = [next((r for r in run["rows"] if (r["loader"], r["shards"]) == (loader, shards)), {}) for run in runs]
        rows.append([loader + (f" ({found[0]['note']})" if found[0].get("note") else ""), shards,
                     _joined([r.get("img_per_s") for r in found], ",.0f"),
                     _joined([r.get("x_seeds") for r in found], ".1f")])
    label = "" if len(runs) == 1 else ", run " + " / ".join(str(i + 1) for i in range(len(runs)))
    return markdown(["loader", "shards", f"img/s{label}", f"× baseline{label}"], rows, {2, 3})


def train_table(bench: dict) -> str:
    rows = [[row["feed"], row["variant"], f"{row['images_per_s']:,.0f}", f"{100 * row['data_wait_share']:.1f} %",
             "" if row.get("vs_on_device") is None else f"{row['vs_on_device']:.2f}",
             "" if row.get("peak_gib") is None else f"{row['peak_gib']:.2f}"] for row in bench["rows"]]
    return markdown(["feed", "variant", "img/s", "data wait", "vs on-device", "peak GiB"], rows, {2, 3, 4, 5})


def sweep_table(sweep: dict) -> str:
    rows = [[f"{r['latent_dim']:,}", f"{r['beta']:g}", f"{r['harmonic']:.3f}", f"{r['harmonic_n']:.2f}",
             f"{r['harmonic_k']:.2f}", f"{r['bpd']:.3f}", f"{r['psnr']:.2f}", f"{r['active_units']}/{r['latent_dim']}"]
            for r in sweep["results"]]
    return markdown(["latent", "β", "H", "n", "k", "bits/dim", "PSNR", "active"], rows, set(range(8)))


def replace_table(text: str, name: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: no '<!-- table:{name} -->' ... '<!-- end:{name} -->' block in the file")
    return pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {path}: {err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loaders", type=Path, nargs="+", help="python -m loaders.bench JSON, one per run")
    parser.add_argument("--train", type=Path, help="python -m train.bench JSON")
    parser.add_argument("--sweep", type=Path, help="python -m eval.sweep's sweep.json")
    parser.add_argument("--file", type=Path, default=BENCHMARKS, help="the Markdown file to update")
    args = parser.parse_args(argv)
    text = args.file.read_text()
    if args.loaders:
        text = replace_table(text, "loaders", loaders_table([_load(p) for p in args.loaders]))
    if args.train:
        text = replace_table(text, "train", train_table(_load(args.train)))
    if args.sweep:
        text = replace_table(text, "sweep", sweep_table(_load(args.sweep)))
    args.file.write_text(text)
    print(f"updated {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
