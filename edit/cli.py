"""`python -m edit amplify|guide|identity`: run one edit, write its PNG grids and a JSON of measurements.

    python -m edit amplify  --vae runs/base --judge runs/judge --shards shards --out runs/edits [--basis pca]
    python -m edit guide    --vae runs/base --guide runs/guide --judge runs/judge --shards shards --out runs/edits \\
                            [--changes add:Eyeglasses,remove:Smiling,add:Bangs,add:Blond_Hair]
    python -m edit identity --vae runs/base --judge runs/judge --shards shards --out runs/edits [--anchors 12,34,56]

Bad input (unknown attribute, too few images, a classifier that does not fit the VAE or the shards, missing
files) ends with one line naming the value or file and exit code 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common.device import default_device
from common.errors import UserError, report_user_error
from edit.common import EditError, fmt_float, load_context

console = Console()

DEFAULT_CHANGES = "add:Eyeglasses,remove:Smiling,add:Bangs,add:Blond_Hair"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edit", description="Latent face editing with a trained VAE.")
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--vae", required=True, help="VAE checkpoint: a vae/ folder, a run checkpoint or a run folder")
    common.add_argument("--judge", required=True, help="classifier folder that scores the edits")
    common.add_argument("--guide", default=None, help="classifier folder that steers guided edits (guide command)")
    common.add_argument("--shards", required=True, help="build-shards output root (train/, valid/, test/)")
    common.add_argument("--out", required=True, help="folder for the PNG grids and the JSON report")
    common.add_argument("--subjects", type=int, default=8, help="test images per grid")
    common.add_argument("--seed", type=int, default=0, help="chooses the subjects")
    common.add_argument("--batch-size", type=int, default=64)
    common.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    common.add_argument("--no-cache", action="store_true", help="do not read/write the train-split latents cache")

    amplify = commands.add_parser("amplify", parents=[common], help="z_i + alpha on 4 discovered directions")
    amplify.add_argument("--basis", choices=("axis", "pca"), default="axis",
                         help="axis: single latent components (z_i + alpha); pca: principal axes of mu over train")
    amplify.add_argument("--count", type=int, default=4, help="directions to show")
    amplify.add_argument("--components", default="", help="show these latent indices / PCs instead of discovering")
    amplify.add_argument("--candidates", type=int, default=32, help="directions probed (largest data spread first)")
    amplify.add_argument("--probe", type=int, default=12, help="valid images the discovery probes with")
    amplify.add_argument("--alpha-max", type=float, default=3.0,
                         help="alpha range, in std of the data along the direction")
    amplify.add_argument("--num-alphas", type=int, default=10)
    amplify.add_argument("--max-similarity", type=float, default=0.6,
                         help="skip a direction whose judge-effect vector has a larger |cosine| with a chosen one's")

    guide = commands.add_parser("guide", parents=[common], help="optimise z so the guide assigns new labels")
    guide.add_argument("--changes", default=DEFAULT_CHANGES,
                       help="comma-separated add:NAME / remove:NAME (or --changes=+NAME,-NAME)")
    guide.add_argument("--steps", type=int, default=200, help="most Adam steps per subject")
    guide.add_argument("--lr", type=float, default=0.05)
    guide.add_argument("--target-prob", type=float, default=0.95,
                       help="a subject stops once the guide gives its target label this probability")
    guide.add_argument("--w-other", type=float, default=1.0, help="weight of keeping the other 39 guide predictions")
    guide.add_argument("--w-image", type=float, default=5.0, help="weight of the L2 to the reconstruction")
    guide.add_argument("--w-latent", type=float, default=0.05, help="weight of the L2 to mu")
    guide.add_argument("--reference-images", type=int, default=64,
                       help="test images that have the target label, to measure the judge on their reconstructions")
    guide.add_argument("--views", choices=("none", "flip", "eot"), default="flip",
                       help="what the guide sees: dec(z); its mean logits with the mirror image; or also a randomly "
                            "shifted/blurred view each step")
    guide.add_argument("--latent-metric", choices=("euclidean", "whitened"), default="euclidean",
                       help="the L2 to mu plain, or whitened by the covariance of mu over the train split")

    identity = commands.add_parser("identity", parents=[common], help="morph subjects toward 3 anchor identities")
    identity.add_argument("--anchors", default="", help="3 identity numbers (default: the 3 with most images)")
    identity.add_argument("--min-anchor-images", type=int, default=3)
    identity.add_argument("--min-identity-images", type=int, default=3,
                          help="train identities with this many images teach the within-identity subspace")
    identity.add_argument("--pose-variance", type=float, default=0.65,
                          help="share of the within-identity variance the kept subspace explains")
    identity.add_argument("--pose-dims", type=int, default=0,
                          help="fix the subspace size instead (0: use --pose-variance)")
    identity.add_argument("--strengths", default="0.5,1", help="values of t shown (1: all of the identity part)")
    return parser


def show(command: str, report: dict) -> None:
    if command == "guide":
        table = Table(title="label guidance scored by the judge; changes vs the reconstruction")
        for column in ("change", "method", "judge ok", "p(target)", "other |dp|", "PSNR", "|dz|"):
            table.add_column(column, justify="left" if column in ("change", "method") else "right",
                             no_wrap=column != "change")
        for entry in report["changes"]:
            rec = entry["reconstruction"]
            table.add_row(entry["change"], "recon.", f"{rec['judge_success']}", fmt_float(rec["judge_target_prob"]),
                          "", "", "")
            for method, short in (("guided", "guided"), ("mean_difference_matched", "mean-diff =|dz|"),
                                  ("mean_difference_full", "mean-diff full")):
                m = entry[method]
                table.add_row("", short, f"{m['judge_success']}/{len(entry['subjects'])}",
                              fmt_float(m["judge_target_prob"]),
                              fmt_float(m["other_attributes_mean_abs_change"]), f"{m['psnr_to_reconstruction_db']:.1f}",
                              f"{m['latent_distance']:.2f}")
        console.print(table)
    elif command == "amplify":
        table = Table(title=f"feature amplification ({report['basis']} basis): what each direction moves (judge)")
        for column in ("direction", "std", "moves (judge delta p, -A..+A)", "train correlation"):
            table.add_column(column)
        for c in report["components"]:
            moves = ", ".join(f"{m['attribute']} {m['judge_prob_change']:+.2f}" for m in c["moves"])
            corr = ", ".join(f"{m['attribute']} {m['train_correlation']:+.2f}" for m in c["top_correlated_attributes"])
            table.add_row(c["direction"], f"{c['data_std']:.2f}", moves, corr)
        console.print(table)
    else:
        table = Table(title=f"identity transfer ({report['subspace']['dims']}-dim within-identity subspace kept)")
        for column in ("anchor", "latent", "judge feat. cos to anchor", "judge attr. dist to anchor",
                       "re-enc. identity dist", "thumbnail corr to subject", "re-enc. pose dist"):
            table.add_column(column, justify="left" if column in ("anchor", "latent") else "right")
        for anchor in report["anchors"]:
            for i, (name, m) in enumerate(anchor["metrics"].items()):
                table.add_row(str(anchor["identity"]) if i == 0 else "", name,
                              fmt_float(m["judge_feature_cosine_to_anchor"]),
                              fmt_float(m["judge_attribute_distance_to_anchor"]),
                              f"{m['latent_outside_distance_to_anchor']:.2f}",
                              fmt_float(m["low_frequency_correlation_to_subject"]),
                              f"{m['latent_within_distance_to_subject']:.2f}")
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edit import amplify, guide, identity

    started, wall_start = time.perf_counter(), time.time() - 1
    try:
        if args.subjects < 1 or args.batch_size < 1:
            raise EditError("--subjects and --batch-size must be >= 1")
        device = default_device(args.cpu)
        ctx = load_context(args.vae, args.judge, args.guide, args.shards, device, args.batch_size, not args.no_cache)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        console.print(f"{args.command}: VAE {ctx.vae_folder} (latent {ctx.vae.cfg.latent_dim}), "
                      f"judge {ctx.judge_folder}"
                      + (f", guide {ctx.guide_folder}" if ctx.guide_folder else "") + f", device {device}")
        with torch.no_grad():
            report = {"amplify": amplify, "guide": guide, "identity": identity}[args.command].run(
                ctx, args, out, console.print)
    except UserError as err:  # EditError, CheckpointError, ClassifierError, BuildError, LoaderError
        return report_user_error(err)
    report = {"command": args.command, "vae": str(ctx.vae_folder), "judge": str(ctx.judge_folder),
              "guide": str(ctx.guide_folder) if ctx.guide_folder else None, "shards": str(ctx.shards),
              "seed": args.seed, "seconds": time.perf_counter() - started, **report,
              "figures": sorted(p.name for p in out.glob(f"{args.command}_*.png") if p.stat().st_mtime >= wall_start)}
    path = out / f"{args.command}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    show(args.command, report)
    console.print(f"wrote {path} and {len(report['figures'])} figure(s) in {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
