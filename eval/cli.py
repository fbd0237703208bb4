"""`python -m eval`: every evaluation metric of a checkpoint on one split, as a table, a JSON report and a
figure of the KL per latent component. `bonus_1.py` runs the same evaluation through `run()` below.

    python -m eval --checkpoint runs/base --shards shards/test [--iw-samples 16] [--loader dali]
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m eval --checkpoint ... --shards ...    # 2 ranks
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.device import default_device, require_usable_gpu
from common.errors import UserError, report_user_error
from common.exit import exit_process
from common.plots import save_kl_per_component
from eval.core import CAVEAT, HARMONIC_FORMULA, EvalError, EvalOptions, evaluate
from loaders import LOADER_KINDS
from train.checkpoint import load_vae, resolve_vae_folder

console = Console()


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    is_main: bool
    fp32_precision: tuple[str, str]  # what to restore on close (main() may run inside a longer process, e.g. tests)

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = self.fp32_precision
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def start_runtime(cpu: bool) -> Runtime:
    """One process, or one rank of a `torchrun` / `accelerate launch` job (Accelerate sets up the process group:
    gloo on CPU, e.g. with ACCELERATE_USE_CPU=1, NCCL on GPUs)."""
    from accelerate.utils import parse_flag_from_env

    cpu = cpu or parse_flag_from_env("ACCELERATE_USE_CPU")  # Accelerator reads it, PartialState does not
    require_usable_gpu(allow_cpu=cpu)
    # Full float32 on GPUs: TF32 convolutions (cuDNN's default) keep ~3 decimal digits, a tenth of a grey level
    # in the decoder mean, which a discretized likelihood would see.
    precision = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "ieee"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=cpu)
        return Runtime(state.device, state.process_index, state.num_processes, state.is_main_process, precision)
    return Runtime(default_device(cpu), 0, 1, True, precision)


def common_parser(description: str, iw_default: int, checkpoint_help: str = "") -> argparse.ArgumentParser:
    """The flags eval and bonus_1.py share; `checkpoint_help` makes --checkpoint optional (bonus_1.py finds one)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", required=not checkpoint_help,
                        help="a vae/ folder (model.safetensors + model.json), a run checkpoint, or a run folder "
                             "(its latest checkpoint)" + checkpoint_help)
    parser.add_argument("--shards", required=True, help="the split folder to evaluate, e.g. shards/test")
    parser.add_argument("--loader", default="resident", choices=LOADER_KINDS)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank; does not change the result")
    parser.add_argument("--seed", type=int, default=0, help="seeds every image's z draws (keyed by image)")
    parser.add_argument("--samples", type=int, default=1,
                        help="z samples per image for the reconstruction NLL (hence n, bits/dim and H)")
    parser.add_argument("-K", "--iw-samples", type=int, default=iw_default,
                        help="K of the importance-weighted NLL bound (0: skip; K=1 equals the ELBO)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="loader workers/threads (default: cores per rank)")
    parser.add_argument("--cpu", action="store_true", help="evaluate on the CPU even when a GPU is present")
    parser.add_argument("--json", default=None, help="report path (default: OUT/<command>-<split>.json)")
    parser.add_argument("--out", default=None,
                        help="folder for the report and figure (default: the checkpoint's vae/ folder)")
    return parser


def run(args: argparse.Namespace, command: str, options: EvalOptions,
        show: Callable[[dict, Path], None]) -> int:
    """Load, evaluate, write the JSON report, show it; clear one-line errors (exit code 1) for bad input."""
    runtime = None
    try:
        if options.samples < 1 or options.iw_samples < 0 or options.batch_size < 1 or options.quality_images < 2:
            raise EvalError("--samples and --batch-size must be >= 1, --iw-samples >= 0, --quality-images >= 2")
        runtime = start_runtime(args.cpu)
        vae, meta = load_vae(args.checkpoint, runtime.device)
        folder = resolve_vae_folder(args.checkpoint)
        log = console.print if runtime.is_main else (lambda message: None)
        log(f"checkpoint {folder} (preset latent {vae.cfg.latent_dim}, {vae.cfg.likelihood}), device "
            f"{runtime.device}, {runtime.world_size} rank(s), loader {options.loader}")
        report = evaluate(vae, args.shards, runtime.device, options, rank=runtime.rank,
                          world_size=runtime.world_size, reduce_sum=runtime.reduce_sum, log=log,
                          trained_on=meta.get("dataset"))
        out = Path(args.out) if args.out else folder
        report = {"command": command, "checkpoint": str(folder),
                  "checkpoint_meta": {k: v for k, v in meta.items() if k not in ("config", "dataset")},
                  "config": vae.cfg.to_dict(), **report}
        path = Path(args.json) if args.json else out / f"{command}-{report['split_name']}.json"
        if runtime.is_main and options.color_by:
            from eval.latent_map import latent_maps_of_split

            maps = latent_maps_of_split(vae, Path(args.shards), options.color_by, options.quality_images, out)
            report["latent_maps"] = [str(figure) for figure in maps]
        if runtime.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
            show(report, out)
            console.print(f"report: {path}")
        return 0
    except UserError as err:  # CheckpointError, BuildError, LoaderError, EvalError
        return report_user_error(err)
    finally:
        if runtime is not None:
            runtime.close()


def print_caveat(report: dict) -> None:
    """The other readings of H (labelled, after the project's), the caveat next to H, always; plus every warning
    (e.g. fewer than a quarter of the components active)."""
    m = report["metrics"]
    if "harmonic" not in m:  # a deterministic autoencoder: its note is among the warnings
        for warning in report["warnings"]:
            console.print(f"[bold yellow]warning[/bold yellow]: {escape(warning)}", highlight=False)
        return
    console.print(f"other readings of H, not the project's: with the continuous training NLL instead of the "
                  f"discretized one n = {m['harmonic_continuous_n']:.4f}, H = {m['harmonic_continuous']:.4f}"
                  + (" (n < 0: a density, H means nothing)" if m["harmonic_continuous_n"] < 0 else "")
                  + f"; with n per pixel (D = {report['num_dims'] // 3}) n = {m['harmonic_per_pixel_n']:.4f}, "
                  f"H = {m['harmonic_per_pixel']:.4f}", highlight=False)
    console.print(f"[bold]caveat[/bold]: {escape(CAVEAT)} Here: bits/dim {m['bpd']:.4f}, active components "
                  f"{m['active_units']}/{report['latent_dim']}.", highlight=False)
    for warning in report["warnings"]:
        console.print(f"[bold yellow]warning[/bold yellow]: {escape(warning)}", highlight=False)


def _show_eval(report: dict, out: Path) -> None:
    m, d = report["metrics"], report["latent_dim"]
    table = Table(title=f"{report['checkpoint']} on {report['split']} ({m['images']:,} images, seed "
                        f"{report['seed']}, {report['z_samples']} z sample(s) per image)")
    table.add_column("metric")
    table.add_column("nats / image", justify="right")
    table.add_column("bits / dim", justify="right")
    table.add_column("notes")
    table.add_row("discretized NLL", f"{m['discretized_nll']:.2f}", f"{m['nll_bpd']:.4f}",
                  "256-bin mass, open edge bins; >= 0")
    table.add_row("Gaussian NLL (continuous)", f"{m['gaussian_nll']:.2f}", f"{m['gaussian_nll_bpd']:.4f}",
                  "density: the training loss, can be < 0")
    if "kl" in m:  # not for a deterministic autoencoder
        table.add_row("KL", f"{m['kl']:.2f}", "", f"{m['kl_bits_per_component']:.4f} bits per component")
        table.add_row("negative ELBO", f"{m['neg_elbo']:.2f}", f"{m['bpd']:.4f}", "discretized NLL + KL (upper bound)")
    if "iw_nll" in m:
        table.add_row(f"IW NLL bound, K={report['iw_samples']}", f"{m['iw_nll']:.2f}", f"{m['iw_bpd']:.4f}",
                      f"MC negative ELBO, same K draws: {m['mc_bpd']:.4f} bits/dim")
    fixed = report["fixed_sigma"]
    if fixed is not None and "kl" in m:
        table.add_row("negative ELBO at fitted sigma", f"{fixed['test_nll'] + m['kl']:.2f}", f"{fixed['test_bpd']:.4f}",
                      f"one global sigma = {fixed['sigma_grey_levels']:.2f} grey levels fitted on valid "
                      f"(model's: {fixed['model_sigma_grey_levels']:.2f}); NLL {fixed['test_nll_bpd']:.4f} bits/dim")
    if "mse" in m:
        table.add_row("reconstruction MSE / PSNR", "", "", f"MSE {m['mse']:.2f} (0..255 units, to_uint8 of the "
                      f"decoder mean at mu), PSNR {m['psnr']:.2f} dB")
    table.add_row("active components", "", "", f"{m['active_units']} / {d} (Var(mu) > {report['active_threshold']:g})")
    quality = report["sample_quality"]
    if quality:
        table.add_row("Fréchet distance, judge features", "", "",
                      f"reconstructions {quality['fd_reconstructions']:.3f}; prior samples "
                      + ", ".join(f"T={t} {quality[f'fd_samples_t{t}']:.3f}" for t in ("0.2", "0.5", "1", "1.5"))
                      + f"; other real images {quality['fd_real_reference']:.3f}")
        table.add_row("fine detail kept", "", "", f"reconstructions {quality['detail_kept_reconstructions']:.2f} of "
                      f"the images' high-frequency (Laplacian) energy")
        table.add_row("mean-face PSNR", "", "", f"T=0.2 samples {quality['mean_face_psnr_t0.2']:.2f} dB, decode(0) "
                      f"{quality['mean_face_psnr_decode_zero']:.2f} dB (to the train split's mean image)")
    if "harmonic" in m:
        table.add_row("harmonic metric", "", "", f"n {m['harmonic_n']:.4f}, k {m['harmonic_k']:.4f}, "
                      f"H {m['harmonic']:.4f}  ({HARMONIC_FORMULA}; lower is better)")
    console.print(table)
    print_caveat(report)
    if "harmonic" in m:  # a point latent (the autoencoders) has no KL to draw
        figure = save_kl_per_component(out / f"kl_per_component-{report['split_name']}.png",
                                       report["per_component"]["kl"], report["per_component"]["mu_variance"],
                                       report["active_threshold"])
        console.print(f"figure: {figure}")


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("Evaluate a VAE checkpoint on a split: likelihoods, KL, IW bound, MSE/PSNR, harmonic "
                           "metric.", iw_default=16)
    parser.add_argument("--valid-shards", default=None,
                        help="fixed-sigma models: the split to fit one global sigma on (default: the sibling valid/)")
    parser.add_argument("--no-fit-sigma", action="store_true", help="skip the global-sigma fit of fixed-sigma models")
    parser.add_argument("--judge", default=None,
                        help="a classifier folder (python -m edit.classifier): also report Fréchet distances in its "
                             "feature space (reconstructions, prior samples per temperature) and mean-face PSNRs")
    parser.add_argument("--quality-images", type=int, default=1000,
                        help="images the Fréchet distances and the latent map use")
    parser.add_argument("--color-by", default="Smiling",
                        help="the attribute that colours the latent map (mu on its two axes for a 2-D latent, else "
                             "on its first two principal axes; plus the decoded manifold for a 2-D latent)")
    args = parser.parse_args(argv)
    options = EvalOptions(loader=args.loader, batch_size=args.batch_size, seed=args.seed, samples=args.samples,
                          iw_samples=args.iw_samples, reconstructions=True, fit_sigma=not args.no_fit_sigma,
                          valid_shards=args.valid_shards, num_workers=args.num_workers, judge=args.judge,
                          quality_images=args.quality_images, color_by=args.color_by)
    return run(args, "eval", options, _show_eval)


if __name__ == "__main__":
    exit_process(main())
