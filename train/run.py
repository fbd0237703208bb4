"""Train the CelebA VAE. Launch with Accelerate (one GPU, many GPUs, many nodes) or plainly:

    accelerate launch train/run.py --shards shards --out runs/base --preset base --loader dali
    python train/run.py --shards shards --out runs/tiny --preset tiny --epochs 2                # CPU
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train/run.py --shards shards ...         # 2 CPU ranks

Reads top to bottom: config -> Accelerate -> loaders -> model, optimizer, EMA -> compile + DDP -> resume
-> one loop with logging, checkpoints, per-epoch validation and figures.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch train/run.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loaders import make_loader
from model import bits_per_dim, create_vae, harmonic_metric
from model.io import save_vae
from train.checkpoint import VAE_FOLDER, checkpoint_name, commit_checkpoint, latest_checkpoint, partial_path
from train.config import parse_config
from common.plots import save_grid, save_loss_curves
from train.objective import EMA, STAT_NAMES, VAEObjective, kl_weight, lr_factor
from train.perceptual import build_perceptual
from model.split_pass import split_sums, summarize

console = Console()


@dataclass
class TrainerState:
    """Where the run is; checkpointed with the rest so `--resume` continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    epoch_sums: list[float] = field(default_factory=lambda: [0.0] * (len(STAT_NAMES) + 1))  # stats + count
    steps_log: list[dict] = field(default_factory=list)
    epochs_log: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


class NonFiniteLoss(RuntimeError):
    pass


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    out = cfg.out_path
    on_cuda = torch.cuda.is_available()
    precision = {"auto": "bf16" if on_cuda else "no", "bf16": "bf16", "fp32": "no"}[cfg.precision]
    accelerator = Accelerator(mixed_precision=precision)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    set_seed(cfg.seed)  # the same initial weights on every rank
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(cfg.to_json() + "\n")

    # Data: every loader delivers uint8 batches already on `device`; ranks get disjoint, equal parts.
    shards = Path(cfg.shards)
    train_loader = make_loader(cfg.loader, shards / "train", cfg.batch_size, device, rank=rank, world_size=world,
                               seed=cfg.seed, shuffle=True, drop_last=True, num_workers=cfg.num_workers)
    valid_loader = make_loader(cfg.loader, shards / "valid", cfg.batch_size, device, rank=rank, world_size=world,
                               seed=cfg.seed, shuffle=False, drop_last=False, num_workers=cfg.num_workers)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch  # the LR schedule's length; --max-steps only stops early

    # Model, objective, optimizer, EMA.
    overrides = {"likelihood": cfg.likelihood} | ({"latent_dim": cfg.latent_dim} if cfg.latent_dim else {})
    vae = create_vae(cfg.preset, **overrides).to(device)
    perceptual = build_perceptual(cfg.perceptual, device) if cfg.perceptual else None
    objective = VAEObjective(vae, perceptual, cfg.perceptual_weight)
    decay = [p for p in vae.parameters() if p.ndim >= 2]
    no_decay = [p for p in vae.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99),
                                  fused=on_cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
    ema = EMA(vae, cfg.ema_decay)
    ema_vae = copy.deepcopy(vae).eval().requires_grad_(False)  # EMA weights are copied in to evaluate
    state = TrainerState()

    # Compile once (not per epoch), then DDP. The scheduler is stepped by hand, not prepared: Accelerate
    # would step it once per process.
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and on_cuda)
    step_module = torch.compile(objective) if use_compile else objective
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    accelerator.register_for_checkpointing(scheduler, ema, state)

    if cfg.resume:
        resume_from = latest_checkpoint(out) if cfg.resume == "latest" else Path(cfg.resume)
        if resume_from is None:
            raise SystemExit(f"--resume latest: no checkpoint in {out / 'checkpoints'}")
        accelerator.load_state(str(resume_from))
        console.print(f"resumed from {resume_from} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")

    def save_checkpoint() -> Path:
        final = out / "checkpoints" / checkpoint_name(state.step)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial_path(final)))
        if accelerator.is_main_process:
            save_vae(partial_path(final) / VAE_FOLDER, vae, {"step": state.step, "epoch": state.epoch,
                                                             "shards": str(shards), "dataset": train_loader.split.dataset},
                     state_dict=ema.state_dict())
            commit_checkpoint(final, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        return final

    figure_images = None
    if cfg.figures and accelerator.is_main_process:
        figure_images = fixed_figure_images(shards, device)
    metrics_file = open(out / "metrics.jsonl", "a") if accelerator.is_main_process else None
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console,
                        disable=not accelerator.is_main_process)
    params = list(vae.parameters())
    stats_sum = torch.zeros(len(STAT_NAMES), device=device)
    window_start, window_wait, window_steps = time.perf_counter(), 0.0, 0
    stop = False
    with progress:
        bar = progress.add_task("train", total=steps_per_epoch, epoch=state.epoch, stats="")
        while state.epoch < cfg.epochs and not stop:
            train_loader.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
            progress.update(bar, completed=state.batch_in_epoch, epoch=state.epoch)
            epoch_sums = torch.tensor(state.epoch_sums, device=device, dtype=torch.float64)
            batches = iter(train_loader)
            while True:
                wait_started = time.perf_counter()
                batch = next(batches, None)  # the only place the step can wait for data
                window_wait += time.perf_counter() - wait_started
                if batch is None:
                    break
                weight = kl_weight(state.step, cfg.kl_anneal, cfg.beta, cfg.kl_anneal_steps, cfg.kl_cycle_ramp)
                if state.step == cfg.debug_nan_at_step:
                    weight = math.nan
                with accelerator.autocast():
                    loss, stats = step_module(batch.images, torch.tensor(weight, device=device))
                accelerator.backward(loss)
                # The clipped norm is computed on the all-reduced gradients, so every rank sees the same
                # value and takes the same branch; this is the step's one CPU-GPU sync.
                grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                if not torch.isfinite(grad_norm):
                    optimizer.zero_grad(set_to_none=True)
                    state.epoch_sums = epoch_sums.tolist()
                    saved = save_checkpoint()
                    raise NonFiniteLoss(f"non-finite loss/gradient at step {state.step} (loss {loss.item():.4g}); "
                                        f"the last good state is saved in {saved}")
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                ema.update(vae, state.step)
                state.step += 1
                state.batch_in_epoch += 1
                stats_sum += stats.detach()
                epoch_sums += torch.cat([stats.detach().double(), stats.new_ones(1, dtype=torch.float64)])
                window_steps += 1
                progress.advance(bar)

                if state.step % cfg.log_every == 0:
                    elapsed = time.perf_counter() - window_start
                    means = (accelerator.reduce(stats_sum, "sum") / (window_steps * world)).tolist()
                    record = step_record(state, means, cfg.batch_size * world * window_steps / elapsed,
                                         window_wait / elapsed, scheduler.get_last_lr()[0], weight, vae.cfg.latent_dim)
                    state.steps_log.append(record)
                    if metrics_file:
                        metrics_file.write(json.dumps(record) + "\n")
                        metrics_file.flush()
                    progress.update(bar, stats=(f"loss {record['loss']:.1f} nll {record['gaussian_nll']:.1f} "
                                                f"kl {record['kl']:.1f} bpd {record['bpd']:.3f} "
                                                f"{record['images_per_s']:.0f} img/s wait {100 * record['data_wait_share']:.1f}%"))
                    stats_sum.zero_()
                    window_start, window_wait, window_steps = time.perf_counter(), 0.0, 0
                if state.step % cfg.checkpoint_every == 0:
                    state.epoch_sums = epoch_sums.tolist()
                    save_checkpoint()
                if cfg.max_steps and state.step >= cfg.max_steps:
                    stop = True
                    break
            state.epoch_sums = epoch_sums.tolist()
            if stop:
                break

            # End of epoch: train means, validation with the EMA weights, figures.
            sums = accelerator.reduce(epoch_sums, "sum").tolist()
            train_means = dict(zip(STAT_NAMES, [value / sums[-1] for value in sums[:-1]]))
            ema.copy_to(ema_vae)
            generator = torch.Generator(device).manual_seed(cfg.seed)
            valid_loader.set_epoch(0)
            valid = summarize(split_sums(ema_vae, valid_loader, lambda t: accelerator.reduce(t, "sum"), generator),
                              vae.cfg.latent_dim)
            record = {"kind": "epoch", "epoch": state.epoch, "step": state.step, "train": train_means, "valid": valid}
            state.epochs_log.append(record)
            if accelerator.is_main_process:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                console.print(f"epoch {state.epoch}: valid NLL {valid['discretized_nll']:.1f} KL {valid['kl']:.1f} "
                              f"bpd {valid['bpd']:.4f} H {valid['harmonic']:.4f} active {valid['active_units']}/"
                              f"{vae.cfg.latent_dim}")
                if cfg.figures:
                    write_figures(out / "figures", ema_vae, figure_images, state, cfg.seed)
            state.epoch += 1
            state.batch_in_epoch = 0
            state.epoch_sums = [0.0] * (len(STAT_NAMES) + 1)

    final = save_checkpoint()
    # DDP must keep every rank's weights identical; gather per-tensor sums to prove it in the summary.
    checksums = accelerator.gather(torch.stack([p.detach().double().sum() for p in params])[None].to(device))
    if accelerator.is_main_process:
        metrics_file.close()
        summary = {"step": state.step, "epoch": state.epoch, "world_size": world, "checkpoint": str(final),
                   "ranks_in_sync": bool((checksums == checksums[0]).all()), "last_epoch": (state.epochs_log or [None])[-1]}
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"done at step {state.step}; checkpoint {final}")
    accelerator.end_training()
    return 0


def step_record(state: TrainerState, means: list[float], images_per_s: float, wait_share: float, lr: float,
                weight: float, latent_dim: int) -> dict:
    stats = dict(zip(STAT_NAMES, means))
    harmonic = harmonic_metric(stats["discretized_nll"], stats["kl"], latent_dim=latent_dim)
    return {"kind": "step", "step": state.step, "epoch": state.epoch, **stats,
            "bpd": bits_per_dim(stats["discretized_nll"] + stats["kl"]), "harmonic": harmonic.h,
            "lr": lr, "kl_weight": weight, "images_per_s": images_per_s, "data_wait_share": wait_share}


def fixed_figure_images(shards: Path, device: torch.device) -> torch.Tensor:
    """The first 16 test images (fixed across epochs): 8 to reconstruct, and pairs to interpolate between."""
    from loaders.contract import nchw
    from loaders.shards import decode_members, open_checked, read_members

    split = open_checked(shards / "test")
    rows = np.arange(min(16, len(split)))  # reading 16 members, not decoding the whole split
    members = [data for _, data in read_members(split, rows)]
    return nchw(decode_members(split, rows, members)).to(device)


@torch.no_grad()
def write_figures(folder: Path, vae, images: torch.Tensor, state: TrainerState, seed: int) -> None:
    from model import to_model_range, to_uint8

    tag = f"epoch{state.epoch:03d}"
    save_loss_curves(folder / "loss_curves.png", state.steps_log, state.epochs_log)
    mu, _ = vae.encode(to_model_range(images[:8]))
    recon = to_uint8(vae.decode(mu)[0])
    save_grid(folder / f"reconstructions_{tag}.png", torch.cat([images[:8], recon]), rows=2,
              title=f"reconstructions (decoder mean at mu), epoch {state.epoch}", row_labels=["input", "recon"])
    # Interpolation between 4 pairs of test images: z = a z1 + (1 - a) z2 on their posterior means.
    mu1, _ = vae.encode(to_model_range(images[8:12]))
    mu2, _ = vae.encode(to_model_range(images[12:16]))
    alphas = torch.linspace(0, 1, 10, device=images.device)
    z = (alphas[None, :, None] * mu1[:, None] + (1 - alphas[None, :, None]) * mu2[:, None]).flatten(0, 1)
    save_grid(folder / f"interpolation_{tag}.png", to_uint8(vae.decode(z)[0]), rows=4,
              title="interpolation z = a*z1 + (1-a)*z2", col_labels=[f"a={a:.2f}" for a in alphas.tolist()])
    generator = torch.Generator(images.device).manual_seed(seed)
    eps = torch.randn((10, vae.cfg.latent_dim), generator=generator, device=images.device)
    temperatures = (0.2, 0.5, 1.0, 1.5)
    z = torch.cat([t * eps for t in temperatures])
    save_grid(folder / f"samples_{tag}.png", to_uint8(vae.decode(z)[0]), rows=4,
              title="prior samples z = temp * eps", row_labels=[f"temp {t}" for t in temperatures])


if __name__ == "__main__":
    sys.exit(main())
