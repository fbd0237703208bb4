"""`python -m eval.sweep`: the same training budget over latent sizes, KL weights and target rates, each run
evaluated, so a user can pick a model that scores well on the harmonic metric H without collapsing.

    python -m eval.sweep --shards shards --out runs/sweep --minutes 20 --latent-dims 256,2048 --rates 0,650

A rate of 0 trains with the fixed KL weight beta; a rate C > 0 holds the KL at C nats per image (`train.rate`).

Writes `OUT/sweep.json` (every configuration's settings and test metrics), `OUT/sweep.png` (H against bits/dim
and against PSNR, one labelled point per configuration) and one run folder per configuration. A finished
configuration (its eval JSON present) is skipped on a re-run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.errors import UserError, report_user_error
from common.plots import save_labelled_scatter
from eval.cli import main as eval_main
from train.run import main as train_main

console = Console()


class SweepError(UserError):
    pass


def parse_list(spec: str, kind, flag: str) -> list:
    try:
        values = [kind(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise SweepError(f"{flag} {spec!r}: expected comma-separated numbers")
    return values


def run_one(shards: Path, folder: Path, latent_dim: int, beta: float, rate: float, minutes: float,
            train_flags: list[str]) -> dict:
    report = folder / "eval" / "eval-test.json"
    if not report.is_file():
        code = train_main(["--shards", str(shards), "--out", str(folder), "--latent-dim", str(latent_dim), "--beta",
                           str(beta), "--rate-target", str(rate), "--minutes", str(minutes), *train_flags])
        if code == 0:
            code = eval_main(["--checkpoint", str(folder), "--shards", str(shards / "test"), "-K", "0",
                              "--out", str(report.parent)])
        if code != 0:
            raise SweepError(f"{folder}: {describe(latent_dim, beta, rate)} failed (exit code {code})")
    metrics = json.loads(report.read_text())["metrics"]
    return {"latent_dim": latent_dim, "beta": beta, "rate_target": rate, "run": str(folder),
            **{key: metrics[key] for key in ("bpd", "psnr", "harmonic", "harmonic_n", "harmonic_k", "active_units",
                                             "kl")}}


def describe(latent_dim: int, beta: float, rate: float) -> str:
    return f"d={latent_dim}, " + (f"KL held at {rate:g} nats" if rate else f"β={beta:g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=Path, required=True, help="build-shards output root")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, required=True, help="training budget of every configuration")
    parser.add_argument("--latent-dims", default="128,512,2048")
    parser.add_argument("--betas", default="1")
    parser.add_argument("--rates", default="0", help="target KL in nats per image (0: the fixed beta)")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER,
                        help="after --: further train/run.py flags shared by every configuration")
    args = parser.parse_args(argv)
    train_flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    try:
        configs = [(d, b, c) for d in parse_list(args.latent_dims, int, "--latent-dims")
                   for b in parse_list(args.betas, float, "--betas") for c in parse_list(args.rates, float, "--rates")]
        results = [run_one(args.shards, args.out / (f"latent{d}-beta{b:g}" + (f"-rate{c:g}" if c else "")), d, b, c,
                           args.minutes, train_flags) for d, b, c in configs]
    except UserError as err:
        return report_user_error(err)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps({"minutes": args.minutes, "train_flags": train_flags,
                                                     "results": results}, indent=2) + "\n")
    labels = [describe(r["latent_dim"], r["beta"], r["rate_target"]) for r in results]
    save_labelled_scatter(args.out / "sweep.png",
                          [([r["bpd"] for r in results], [r["harmonic"] for r in results], "bits/dim (negative ELBO)",
                            "harmonic metric H"),
                           ([r["psnr"] for r in results], [r["harmonic"] for r in results], "reconstruction PSNR (dB)",
                            "harmonic metric H")],
                          labels, title=f"{args.minutes:g} minutes of training per configuration (test split)")
    table = Table(title=f"sweep, {args.minutes:g} min per configuration (test split)")
    for column in ("latent", "beta", "rate", "H", "n", "k", "bits/dim", "PSNR", "active"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(str(r["latent_dim"]), f"{r['beta']:g}", f"{r['rate_target']:g}" if r["rate_target"] else "-",
                      f"{r['harmonic']:.4f}", f"{r['harmonic_n']:.4f}",
                      f"{r['harmonic_k']:.4f}", f"{r['bpd']:.4f}", f"{r['psnr']:.2f}",
                      f"{r['active_units']}/{r['latent_dim']}")
    console.print(table)
    console.print(f"wrote {args.out / 'sweep.json'} and {args.out / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
