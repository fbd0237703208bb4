"""Bonus 1: the harmonic metric of a checkpoint on the whole test split.

    python bonus_1.py --shards shards/test --checkpoint runs/base

    n = mean discretized NLL / (D ln 2)    bits per sub-pixel, D = 3*64*64 = 12288
    k = mean KL / (d ln 2)                 bits per latent component, d = latent size
    H = 2nk / (n + k)                      lower is better

The NLL is the discretized one (the probability mass of each pixel's 256-level bin, so >= 0): a continuous
density NLL can be negative, and a harmonic mean of a negative number means nothing. The numbers come from
the same pass as `python -m eval` (eval.core.evaluate, model.split_pass.split_sums) with the same seed and z
samples, so the two commands agree. Needs only the checkpoint and the shards; CPU is fine.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval.cli import common_parser, console, print_caveat, run  # noqa: E402
from eval.core import HARMONIC_FORMULA, EvalOptions  # noqa: E402


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
    parser = common_parser("Bonus 1: n, k and H = 2nk/(n+k) of a checkpoint on the whole test split.", iw_default=0)
    args = parser.parse_args(argv)
    # The harmonic metric needs neither the IW bound, reconstructions nor the sigma fit; skipping them leaves
    # n, k and H exactly as `python -m eval` computes them (the first `samples` z draws are the same).
    options = EvalOptions(loader=args.loader, batch_size=args.batch_size, seed=args.seed, samples=args.samples,
                          iw_samples=args.iw_samples, reconstructions=False, fit_sigma=False,
                          num_workers=args.num_workers)
    return run(args, "bonus_1", options, show)


if __name__ == "__main__":
    sys.exit(main())
