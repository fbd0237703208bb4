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
from typing import Callable, NamedTuple

from rich.console import Console
from rich.table import Table

from common.device import default_device
from common.errors import UserError, report_user_error
from common.flags import add_flags, from_flags
from edit import amplify, guide, identity
from edit.common import EditError, fmt_float, load_context

console = Console()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edit", description="Latent face editing with a trained VAE.")
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--vae", required=True, help="VAE checkpoint: a vae/ folder, a run checkpoint or a run folder")
    common.add_argument("--judge", required=True, help="classifier folder that scores the edits")
    common.add_argument("--guide", default=None, help="classifier folder that steers guided edits (guide command)")
    common.add_argument("--shards", required=True, help="build-shards output root (train/, valid/, test/)")
    common.add_argument("--out", required=True, help="folder for the PNG grids and the JSON report")
    common.add_argument("--batch-size", type=int, default=64)
    common.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    common.add_argument("--no-cache", action="store_true", help="do not read/write the train-split latents cache")
    for name, command in COMMANDS.items():
        # --subjects, --seed (edit.common.EditSettings) and the command's own flags
        add_flags(commands.add_parser(name, parents=[common], help=command.help), command.settings)
    return parser


def show_amplify(report: dict) -> None:
    table = Table(title=f"feature amplification ({report['basis']} basis): what each direction changes")
    for column in ("direction", "alpha (std)", "named (judge moves >= "
                   f"{report['named_change']:g})", "grey levels where it changes (low / high end)", "region",
                   "judge moves (probe)"):
        table.add_column(column)
    for c in report["components"]:
        ends = c["ends_vs_reconstruction"]
        moves = ", ".join(f"{m['attribute']} {m['judge_prob_change']:+.2f}" for m in c["moves"])
        table.add_row(c["direction"], f"{c['alpha_in_std'][0]:+.1f}..{c['alpha_in_std'][-1]:+.1f}",
                      f"{c['named_attribute']} {c['judge_named_subjects']}/{len(report['subjects'])}",
                      f"{ends['low']['region_mean_abs_change']:.1f} / {ends['high']['region_mean_abs_change']:.1f}",
                      f"{c['region_area_share']:.0%}", moves)
    console.print(table)
    usage = report["latent_usage"].get("kl_per_component")
    if usage:
        console.print(f"KL {report['latent_usage']['kl_nats_total']:.0f} nats over the components: half of it in "
                      f"{usage['directions_for_half']}, 90% in {usage['directions_for_90_percent']} (effective "
                      f"number {usage['effective_number']:.0f}); the largest component holds "
                      f"{usage['largest_shares'][0]:.1%}")


def show_guide(report: dict) -> None:
    table = Table(title="label guidance scored by the judge; changes vs the reconstruction (outside region: grey "
                        "levels changed outside where the attribute lives)")
    for column in ("change", "method", "judge ok", "p(target)", "other |dp|", "outside region", "PSNR", "|dz|"):
        table.add_column(column, justify="left" if column in ("change", "method") else "right",
                         no_wrap=column != "change")
    for entry in report["changes"]:
        rec = entry["reconstruction"]
        table.add_row(entry["change"], "recon.", f"{rec['judge_success']}", fmt_float(rec["judge_target_prob"]),
                      "", "", "", "")
        for method, short in (("guided", "guided"), ("mean_difference_matched", "mean-diff =|dz|"),
                              ("mean_difference_full", "mean-diff full")):
            m = entry[method]
            table.add_row("", short, f"{m['judge_success']}/{len(entry['subjects'])}",
                          fmt_float(m["judge_target_prob"]),
                          fmt_float(m["other_attributes_mean_abs_change"]),
                          f"{m['outside_region_mean_abs_change']:.1f}", f"{m['psnr_to_reconstruction_db']:.1f}",
                          f"{m['latent_distance']:.2f}")
    console.print(table)


def show_identity(report: dict) -> None:
    table = Table(title=f"identity transfer ({report['subspace']['dims']}-dim within-identity subspace kept)")
    for column in ("anchor", "latent", "judge feat. cos to anchor", "judge attr. dist to anchor",
                   "re-enc. identity dist", "thumbnail corr to subject", "re-enc. pose dist",
                   "PSNR to subject outside the face"):
        table.add_column(column, justify="left" if column in ("anchor", "latent") else "right")
    for anchor in report["anchors"]:
        for i, (name, m) in enumerate(anchor["metrics"].items()):
            table.add_row(str(anchor["identity"]) if i == 0 else "", name,
                          fmt_float(m["judge_feature_cosine_to_anchor"]),
                          fmt_float(m["judge_attribute_distance_to_anchor"]),
                          f"{m['latent_outside_distance_to_anchor']:.2f}",
                          fmt_float(m["low_frequency_correlation_to_subject"]),
                          f"{m['latent_within_distance_to_subject']:.2f}",
                          f"{m['outside_face_psnr_to_subject_db']:.1f}")
    console.print(table)


class Command(NamedTuple):
    run: Callable[..., dict]  # run(ctx, settings, out, log) -> report
    settings: type  # the settings dataclass its flags come from
    help: str
    show: Callable[[dict], None]  # prints the report's table


COMMANDS = {
    "amplify": Command(amplify.run, amplify.AmplifySettings, "z_i + alpha on 4 discovered directions", show_amplify),
    "guide": Command(guide.run, guide.GuideSettings, "optimise z so the guide assigns new labels", show_guide),
    "identity": Command(identity.run, identity.IdentitySettings, "morph subjects toward 3 anchor identities",
                        show_identity),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    started, wall_start = time.perf_counter(), time.time() - 1
    try:
        settings = from_flags(command.settings, args)
        if settings.subjects < 1 or args.batch_size < 1:
            raise EditError("--subjects and --batch-size must be >= 1")
        device = default_device(args.cpu)
        ctx = load_context(args.vae, args.judge, args.guide, args.shards, device, args.batch_size, not args.no_cache)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        console.print(f"{args.command}: VAE {ctx.vae_folder} (latent {ctx.vae.cfg.latent_dim}), "
                      f"judge {ctx.judge_folder}"
                      + (f", guide {ctx.guide_folder}" if ctx.guide_folder else "") + f", device {device}")
        report = command.run(ctx, settings, out, console.print)
    except UserError as err:  # EditError, CheckpointError, ClassifierError, BuildError, LoaderError
        return report_user_error(err)
    report = {"command": args.command, "vae": str(ctx.vae_folder), "judge": str(ctx.judge_folder),
              "guide": str(ctx.guide_folder) if ctx.guide_folder else None, "shards": str(ctx.shards),
              "seed": settings.seed, "seconds": time.perf_counter() - started, **report,
              "figures": sorted(p.name for p in out.glob(f"{args.command}_*.png") if p.stat().st_mtime >= wall_start)}
    path = out / f"{args.command}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    command.show(report)
    console.print(f"wrote {path} and {len(report['figures'])} figure(s) in {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
