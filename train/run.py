"""Train the CelebA VAE. Launch with Accelerate (one GPU, many GPUs, many nodes) or plainly:

    accelerate launch train/run.py --shards shards --out runs/base --preset base --loader dali
    python train/run.py --shards shards --out runs/tiny --preset tiny --epochs 2                # CPU
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train/run.py --shards shards ...         # 2 CPU ranks

Reads top to bottom: `setup` (config, Accelerate, loaders, model, optimizer, EMA, compile + DDP, resume), then
`main`'s loop of `train_one_epoch` and `end_of_epoch` (validation with the EMA weights, figures), then `finish`.
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

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from loaders import Loader, make_loader
from loaders.shards import first_images
from model import VAE, bits_per_dim, harmonic_metric
from model.io import save_vae
from model.vae import VAEConfig, recentre_codes
from model.split_pass import split_sums, summarize
from train.checkpoint import VAE_FOLDER, checkpoint_name, commit_checkpoint, latest_checkpoint, partial_path
from train.config import TrainConfig, parse_config
from train.figures import save_samples, write_figures
from train.objective import EMA, STAT_NAMES, AdversarialPhases, VAEObjective, kl_weight, lr_factor
from train.perceptual import build_perceptual

console = Console()
CALIBRATION_STEPS = 30  # --minutes: steps timed before planning (fewer if the warm-up is shorter)
VALID_STEP_SHARE = 0.5  # a validation batch's cost relative to a training step's (forward only, plus the NLL)
FIGURE_SECONDS = 1.0  # per epoch, the figures (rank 0)
# Every this many steps the codes are moved to their mean over those steps' batches (model.vae.recentre_codes, an
# exact reparametrisation). The KL pulls that mean to 0 only as |mean|^2 / 2, a whisper beside the reconstruction's
# gradients, so runs left it 3-4 units off the origin: there z = 0.2 eps decodes 5-7 dB further from the average
# face than the codes' own centre does (BENCHMARKS.md).
CENTRE_EVERY = 100


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class TrainerState:
    """Where the run is; checkpointed with the rest so `--resume` continues exactly. The epoch is the number of
    validated epochs, and the position inside it follows from the step (`Run.batch_in_epoch`)."""

    step: int
    planned_steps: int  # --minutes: the step count the budget holds, fixed after the first steps (0: not yet)
    epoch_sums: torch.Tensor  # this rank's sums of the STAT_NAMES over the epoch's images, then their count
    code_sums: torch.Tensor  # this rank's sum of the codes mu since the last recentring, then their count
    steps_log: list[dict] = field(default_factory=list)
    epochs_log: list[dict] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return len(self.epochs_log)

    def state_dict(self) -> dict:
        return {"step": self.step, "planned_steps": self.planned_steps, "epoch_sums": self.epoch_sums,
                "code_sums": self.code_sums, "steps_log": self.steps_log, "epochs_log": self.epochs_log}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.planned_steps = state["step"], state["planned_steps"]
        self.steps_log, self.epochs_log = state["steps_log"], state["epochs_log"]
        self.epoch_sums.copy_(state["epoch_sums"])
        if "code_sums" in state:  # checkpoints from before the recentring have none: start the sums afresh
            self.code_sums.copy_(state["code_sums"])


@dataclass
class LogWindow:
    """Throughput, data wait and stat means over the steps since the last log line."""

    stats_sum: torch.Tensor
    started: float = field(default_factory=time.perf_counter)
    waited: float = 0.0
    steps: int = 0

    def reset(self) -> None:
        self.stats_sum.zero_()
        self.started, self.waited, self.steps = time.perf_counter(), 0.0, 0


@dataclass
class Run:
    """Everything the loop touches, built once by `setup`."""

    cfg: TrainConfig
    accelerator: Accelerator
    train_loader: Loader
    valid_loader: Loader
    vae: VAE
    ema: EMA
    ema_vae: VAE  # the EMA weights are copied in to validate, draw and export
    step_module: torch.nn.Module  # the (compiled, DDP-wrapped) VAEObjective
    optimizer: torch.optim.Optimizer
    adversarial: AdversarialPhases | None  # the adversarial autoencoder's regularisation phase
    scheduler: torch.optim.lr_scheduler.LambdaLR
    state: TrainerState
    window: LogWindow
    progress: Progress
    bar: TaskID  # the epoch's progress bar
    metrics_file: object | None  # rank 0 appends metrics.jsonl
    figure_images: torch.Tensor | None

    @property
    def out(self) -> Path:
        return self.cfg.out_path

    started: float = field(default_factory=time.perf_counter)  # when training began in this process
    calibration_seconds: float = 0.0  # --minutes: time of the steps timed for the plan

    @property
    def batch_in_epoch(self) -> int:
        return self.state.step - self.state.epoch * len(self.train_loader)

    @property
    def epochs(self) -> float:
        """Epochs to run: --epochs, or as many (the last one partial) as the planned --minutes budget holds."""
        if not self.cfg.minutes:
            return self.cfg.epochs
        return math.ceil(self.state.planned_steps / len(self.train_loader)) if self.state.planned_steps else math.inf

    def log_record(self, record: dict) -> None:
        if self.metrics_file:
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()


def setup(cfg: TrainConfig, model_cfg: VAEConfig) -> Run:
    if cfg.minutes and cfg.warmup_steps < 3:
        raise SystemExit("--minutes plans the step count during the LR warm-up: use --warmup-steps 3 or more")
    on_cuda = torch.cuda.is_available()
    precision = {"auto": "bf16" if on_cuda else "no", "bf16": "bf16", "fp32": "no"}[cfg.precision]
    accelerator = Accelerator(mixed_precision=precision)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    set_seed(cfg.seed)  # the same initial weights on every rank
    if accelerator.is_main_process:
        cfg.out_path.mkdir(parents=True, exist_ok=True)
        (cfg.out_path / "config.json").write_text(cfg.to_json() + "\n")

    # Data: every loader delivers uint8 batches already on `device`; ranks get disjoint, equal parts.
    shards = Path(cfg.shards)
    train_loader = make_loader(cfg.loader, shards / "train", cfg.batch_size, device, rank=rank, world_size=world,
                               seed=cfg.seed, shuffle=True, drop_last=True, num_workers=cfg.num_workers)
    valid_loader = make_loader(cfg.loader, shards / "valid", cfg.batch_size, device, rank=rank, world_size=world,
                               seed=cfg.seed, shuffle=False, drop_last=False, num_workers=cfg.num_workers)

    vae = VAE(model_cfg).to(device)
    perceptual = build_perceptual(cfg.perceptual, device) if cfg.perceptual else None
    objective = VAEObjective(vae, perceptual, cfg.perceptual_weight)
    adversarial = (AdversarialPhases(vae, cfg.aae_lambda, cfg.weight_decay, cfg.grad_clip)
                   if model_cfg.model == "aae" else None)
    autoencoder = [p for name, p in vae.named_parameters() if not name.startswith("discriminator.")]
    decay = [p for p in autoencoder if p.ndim >= 2]
    no_decay = [p for p in autoencoder if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99),
                                  fused=True)  # one kernel per step; the CPU has it too, so the tests run it
    state = TrainerState(0, 0, torch.zeros(len(STAT_NAMES) + 1, device=device, dtype=torch.float64),
                         torch.zeros(vae.cfg.latent_dim + 1, device=device, dtype=torch.float64))
    steps_per_epoch = len(train_loader)

    def schedule_length() -> int:
        """--epochs x steps per epoch (--max-steps only stops early), or the --minutes plan: made after the first
        steps, all inside the warm-up where the length does not matter yet, and resumed from the state."""
        return state.planned_steps if cfg.minutes else cfg.epochs * steps_per_epoch

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, schedule_length(), cfg.min_lr_ratio))
    ema = EMA(vae, cfg.ema_decay)
    ema_vae = copy.deepcopy(vae).eval().requires_grad_(False)

    # Compile once (not per epoch), then DDP. The scheduler is stepped by hand, not prepared: Accelerate
    # would step it once per process.
    step_module = torch.compile(objective) if compiles(cfg) else objective
    if adversarial is not None:  # the AAE's discriminator is in the model, not in the step DDP synchronises
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            step_module, [name for name, _ in step_module.named_parameters() if ".discriminator." in name])
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    accelerator.register_for_checkpointing(scheduler, ema, state, *(adversarial.optimizers if adversarial else ()))
    if cfg.resume:
        resume_from = latest_checkpoint(cfg.out_path) if cfg.resume == "latest" else Path(cfg.resume)
        if resume_from is None:
            raise SystemExit(f"--resume latest: no checkpoint in {cfg.out_path / 'checkpoints'}")
        accelerator.load_state(str(resume_from))
        console.print(f"resumed from {resume_from} at step {state.step} (epoch {state.epoch})")

    main_process = accelerator.is_main_process
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console,
                        disable=not main_process)
    bar = progress.add_task("train", total=len(train_loader), epoch=state.epoch, stats="")
    return Run(cfg, accelerator, train_loader, valid_loader, vae, ema, ema_vae, step_module, optimizer, adversarial,
               scheduler, state, LogWindow(torch.zeros(len(STAT_NAMES), device=device)), progress, bar,
               open(cfg.out_path / "metrics.jsonl", "a") if main_process else None,
               # The first 16 test images, fixed across epochs: 8 to reconstruct, 4 pairs to interpolate between.
               first_images(shards / "test", 16).to(device) if cfg.figures and main_process else None)


def compiles(cfg: TrainConfig) -> bool:
    return cfg.compile == "on" or (cfg.compile == "auto" and torch.cuda.is_available())


def model_config(cfg: TrainConfig) -> VAEConfig:
    overrides = {"model": cfg.model} | ({"likelihood": cfg.likelihood} if cfg.likelihood else {})
    overrides |= {"latent_dim": cfg.latent_dim} if cfg.latent_dim else {}
    return VAEConfig.from_preset(cfg.preset, **overrides)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    run = setup(cfg, model_config(cfg))
    if run.figure_images is not None and run.state.step == 0:  # what the prior gives before any training
        save_samples(run.out / "figures" / "samples_init.png", run.vae.eval(), cfg.seed,
                     "prior samples z = temp * eps, before training")
        run.vae.train()
    with run.progress:
        while run.state.epoch < run.epochs:
            if not train_one_epoch(run):
                break  # --max-steps reached
            end_of_epoch(run)
    finish(run)
    return 0


def train_one_epoch(run: Run) -> bool:
    """Train from the state's position to the end of its epoch (or of the planned steps, if that comes first);
    False when --max-steps stopped it before."""
    cfg, state, window, accelerator = run.cfg, run.state, run.window, run.accelerator
    run.train_loader.set_epoch(state.epoch, start_batch=run.batch_in_epoch)
    run.progress.update(run.bar, completed=run.batch_in_epoch, epoch=state.epoch)
    device = accelerator.device
    params = list(run.vae.parameters())
    batches = iter(run.train_loader)
    while True:
        wait_started = time.perf_counter()
        batch = next(batches, None)  # the only place the step can wait for data
        window.waited += time.perf_counter() - wait_started
        if batch is None or (state.planned_steps and state.step == state.planned_steps):
            return True
        weight = kl_weight(state.step, cfg.kl_anneal, cfg.beta, cfg.kl_anneal_steps, cfg.kl_cycle_ramp)
        with accelerator.autocast():
            loss, stats, codes = run.step_module(batch.images, torch.tensor(weight, device=device))
        accelerator.backward(loss)
        # The clipped norm is computed on the all-reduced gradients, so every rank sees the same value and
        # takes the same branch; this is the step's one CPU-GPU sync.
        grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not torch.isfinite(grad_norm):
            run.optimizer.zero_grad(set_to_none=True)
            saved = save_checkpoint(run)
            raise NonFiniteLoss(f"non-finite loss/gradient at step {state.step} (loss {loss.item():.4g}); "
                                f"the last good state is saved in {saved}")
        run.optimizer.step()
        if run.adversarial is not None:
            with accelerator.autocast():
                stats[-3:] = run.adversarial.step(batch.images, codes, run.scheduler.get_last_lr()[0],
                                                  lambda t: accelerator.reduce(t, "mean"))
        if cfg.minutes and not state.planned_steps:
            # Before the scheduler sets the next step's rate from the plan.
            plan_budget(run, state.step + 1, time.perf_counter() - wait_started)
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.ema.update(run.vae, state.step)
        state.step += 1
        state.code_sums += torch.cat([codes.double().sum(0), codes.new_full((1,), len(codes), dtype=torch.float64)])
        if state.step % CENTRE_EVERY == 0:
            recentre(run)
        window.stats_sum += stats.detach()
        window.steps += 1
        state.epoch_sums += torch.cat([stats.detach().double(), stats.new_ones(1, dtype=torch.float64)])
        run.progress.advance(run.bar)
        if state.step % cfg.log_every == 0:
            log_steps(run, weight)
        if state.step % cfg.checkpoint_every == 0:
            save_checkpoint(run)
        if cfg.max_steps and state.step >= cfg.max_steps:
            return False


def recentre(run: Run) -> None:
    """Move the codes (live and EMA weights alike) to the mean of those seen since the last time, over all ranks."""
    sums = run.accelerator.reduce(run.state.code_sums, "sum")
    shift = (sums[:-1] / sums[-1]).float()
    recentre_codes(run.vae.state_dict(), shift)
    recentre_codes(run.ema.state_dict(), shift)
    run.state.code_sums.zero_()


def plan_budget(run: Run, done: int, step_seconds: float) -> None:
    """--minutes: once `done` steps are timed, fix the total step count the budget holds.

    Planned inside the warm-up, whose rates do not depend on the schedule's length. The steps are timed from
    the batch fetch to the optimizer step, the first one (one-off costs) and any validation left out;
    validation (a forward pass, about VALID_STEP_SHARE of a training step per batch) and figures are counted
    per epoch. The timings are maximised over ranks, so every rank plans the same number.
    """
    state, cfg = run.state, run.cfg
    if done > 1:
        run.calibration_seconds += step_seconds
    if done < min(CALIBRATION_STEPS, cfg.warmup_steps - 1):
        return
    timings = torch.tensor([run.calibration_seconds / (done - 1), time.perf_counter() - run.started],
                           device=run.accelerator.device, dtype=torch.float64)
    seconds_per_step, elapsed = run.accelerator.reduce(timings, "max").tolist()
    per_epoch = len(run.valid_loader) * seconds_per_step * VALID_STEP_SHARE + FIGURE_SECONDS * cfg.figures
    per_step = seconds_per_step + per_epoch / len(run.train_loader)
    state.planned_steps = done + max(1, int((cfg.minutes * 60 - elapsed) / per_step))
    console.print(f"--minutes {cfg.minutes:g}: {seconds_per_step * 1e3:.0f} ms per step -> {state.planned_steps:,} "
                  f"steps ({state.planned_steps / len(run.train_loader):.1f} epochs)")


def log_steps(run: Run, weight: float) -> None:
    """One metrics.jsonl line for the steps since the last one (stats reduced over ranks) and the progress bar."""
    state, window, world = run.state, run.window, run.accelerator.num_processes
    elapsed = time.perf_counter() - window.started
    means = dict(zip(STAT_NAMES, (run.accelerator.reduce(window.stats_sum, "sum") / (window.steps * world)).tolist()))
    harmonic = harmonic_metric(means["discretized_nll"], means["kl"], latent_dim=run.vae.cfg.latent_dim)
    record = {"kind": "step", "step": state.step, "epoch": state.epoch, **means,
              "bpd": bits_per_dim(means["discretized_nll"] + means["kl"]), "harmonic": harmonic.h,
              "lr": run.scheduler.get_last_lr()[0], "kl_weight": weight,
              "images_per_s": run.cfg.batch_size * world * window.steps / elapsed,
              "data_wait_share": window.waited / elapsed}
    state.steps_log.append(record)
    run.log_record(record)
    run.progress.update(run.bar, stats=(f"loss {record['loss']:.1f} nll {record['gaussian_nll']:.1f} "
                                        f"kl {record['kl']:.1f} bpd {record['bpd']:.3f} "
                                        f"{record['images_per_s']:.0f} img/s wait {100 * record['data_wait_share']:.1f}%"))
    window.reset()


def end_of_epoch(run: Run) -> None:
    """Train means, validation with the EMA weights (reduced over ranks), figures; then the next epoch starts."""
    state, accelerator, latent = run.state, run.accelerator, run.vae.cfg.latent_dim
    sums = accelerator.reduce(state.epoch_sums, "sum").tolist()
    train_means = dict(zip(STAT_NAMES, [value / sums[-1] for value in sums[:-1]]))
    run.ema.copy_to(run.ema_vae)
    generator = torch.Generator(accelerator.device).manual_seed(run.cfg.seed)
    run.valid_loader.set_epoch(0)
    valid = summarize(split_sums(run.ema_vae, run.valid_loader, lambda t: accelerator.reduce(t, "sum"), generator),
                      latent)
    record = {"kind": "epoch", "epoch": state.epoch, "step": state.step, "train": train_means, "valid": valid}
    state.epochs_log.append(record)
    state.epoch_sums.zero_()
    run.log_record(record)
    if accelerator.is_main_process:
        if run.vae.cfg.point_latent:  # no KL, so no ELBO, bits/dim or H
            console.print(f"epoch {record['epoch']}: valid NLL at z = mu {valid['discretized_nll']:.1f} "
                          f"({valid['nll_bpd']:.4f} bits/dim) active {valid['active_units']}/{latent}")
        else:
            console.print(f"epoch {record['epoch']}: valid NLL {valid['discretized_nll']:.1f} KL {valid['kl']:.1f} "
                          f"bpd {valid['bpd']:.4f} H {valid['harmonic']:.4f} active {valid['active_units']}/{latent}")
        if run.figure_images is not None:
            write_figures(run.out / "figures", run.ema_vae, run.figure_images, record["epoch"], state.steps_log,
                          state.epochs_log, run.cfg.seed)


def save_checkpoint(run: Run) -> Path:
    """Accelerate's full state plus the EMA weights folder, written as `.partial` and renamed when complete."""
    state, accelerator = run.state, run.accelerator
    final = run.out / "checkpoints" / checkpoint_name(state.step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial_path(final)))
    if accelerator.is_main_process:
        meta = {"step": state.step, "epoch": state.epoch, "shards": run.cfg.shards,
                "dataset": run.train_loader.split.dataset}
        save_vae(partial_path(final) / VAE_FOLDER, run.vae, meta, state_dict=run.ema.state_dict())
        commit_checkpoint(final, run.cfg.keep_checkpoints)
    accelerator.wait_for_everyone()
    return final


def finish(run: Run) -> None:
    """The final checkpoint and `train_summary.json`, with proof that DDP kept every rank's weights identical."""
    accelerator, state = run.accelerator, run.state
    final = save_checkpoint(run)
    params = list(run.vae.parameters())
    checksums = accelerator.gather(torch.stack([p.detach().double().sum() for p in params])[None].to(accelerator.device))
    if accelerator.is_main_process:
        run.metrics_file.close()
        summary = {"step": state.step, "epoch": state.epoch, "world_size": accelerator.num_processes,
                   "device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision,
                   "compiled": compiles(run.cfg), "planned_steps": state.planned_steps, "minutes": run.cfg.minutes,
                   "train_seconds": time.perf_counter() - run.started, "checkpoint": str(final),
                   "ranks_in_sync": bool((checksums == checksums[0]).all()),
                   "last_epoch": (state.epochs_log or [None])[-1]}
        (run.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"done at step {state.step}; checkpoint {final}")
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(main())
