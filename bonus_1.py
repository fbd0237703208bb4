"""Bonus 1: the harmonic metric of a checkpoint on the whole test split.

    python bonus_1.py --shards shards/test [--checkpoint runs/base]

    n = mean discretized NLL / (D ln 2)    bits per sub-pixel, D = 3*64*64 = 12288
    k = mean KL / (d ln 2)                 bits per latent component, d = latent size
    H = 2nk / (n + k)                      lower is better

The NLL is the discretized one (the probability mass of each pixel's 256-level bin, so >= 0): a continuous
density NLL can be negative, and a harmonic mean of a negative number means nothing. The numbers come from
the same pass as `python -m eval` (eval.core.evaluate, model.split_pass.split_sums) with the same seed and z
samples, so the two commands agree. Needs only the checkpoint and the shards; CPU is fine.

Without --checkpoint it takes the hand-in folder `checkpoint/` (what `python -m eval.export` writes), else the
newest run checkpoint under `runs/`, looking in the current folder and then beside this file.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(HERE))

from common.errors import UserError, report_user_error  # noqa: E402
from eval.cli import common_parser, console, print_caveat, run  # noqa: E402
from eval.core import HARMONIC_FORMULA, EvalOptions  # noqa: E402
from eval.export import HANDIN_FOLDER  # noqa: E402
from model.io import MODEL_WEIGHTS, CheckpointError  # noqa: E402
from train.checkpoint import newest_run_checkpoint  # noqa: E402


def find_checkpoint(places: list[Path]) -> Path:
    """The hand-in folder in the first place that has one, else the newest VAE run checkpoint under their runs/ (an
    autoencoder's, e.g. the demo's comparison run, has no KL and so no H)."""
    for place in places:
        if (place / HANDIN_FOLDER / MODEL_WEIGHTS).is_file():
            return place / HANDIN_FOLDER
    found = [step for step in (newest_run_checkpoint(place / "runs") for place in places) if step is not None]
    if found:
        return found[0]
    looked = ", ".join(f"{place / HANDIN_FOLDER}/, {place / 'runs'}/" for place in places)
    raise CheckpointError(f"no --checkpoint given and none found (looked in {looked}); pass --checkpoint with a "
                          f"vae/ folder, a run checkpoint or a run folder")


def show(report: dict, out: Path) -> None:
    m = report["metrics"]
    console.print(f"[bold]harmonic metric[/bold] of {report['checkpoint']} on {report['split']} "
                  f"({m['images']:,} images)", highlight=False)
    console.print(f"  n = {m['harmonic_n']:.6f} bits per sub-pixel   (discretized NLL {m['discretized_nll']:.2f} "
                  f"nats / image, D = {report['num_dims']})", highlight=False)
    console.print(f"  k = {m['harmonic_k']:.6f} bits per latent component   (KL {m['kl']:.2f} nats / image, "
                  f"d = {report['latent_dim']})", highlight=False)
    console.print(f"  H = {m['harmonic']:.6f}   ({HARMONIC_FORMULA}; lower is better)", highlight=False)
    console.print(f"  z samples per image: {report['z_samples']} (seed {report['seed']}); bits/dim (negative ELBO) "
                  f"{m['bpd']:.4f}; active components {m['active_units']}/{report['latent_dim']}", highlight=False)
    print_caveat(report)


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("Bonus 1: n, k and H = 2nk/(n+k) of a checkpoint on the whole test split.", iw_default=0,
                           checkpoint_help=f"; default: ./{HANDIN_FOLDER}/, else the newest checkpoint under ./runs/")
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        try:
            args.checkpoint = str(find_checkpoint(list(dict.fromkeys([Path.cwd().resolve(), HERE]))))
        except UserError as err:
            return report_user_error(err)
        console.print(f"no --checkpoint given: using {args.checkpoint}", highlight=False)
    # The harmonic metric needs neither the IW bound, reconstructions nor the sigma fit; skipping them leaves
    # n, k and H exactly as `python -m eval` computes them (the first `samples` z draws are the same).
    options = EvalOptions(loader=args.loader, batch_size=args.batch_size, seed=args.seed, samples=args.samples,
                          iw_samples=args.iw_samples, reconstructions=False, fit_sigma=False,
                          num_workers=args.num_workers, require_kl=True)
    return run(args, "bonus_1", options, show)


if __name__ == "__main__":
    sys.exit(main())
