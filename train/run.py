"""Train the CelebA VAE. Launch with Accelerate (one GPU, many GPUs, many nodes) or plainly:

    accelerate launch train/run.py --shards shards --out runs/vae                  # the gpu recipe on CUDA
    python train/run.py --shards shards --out runs/cpu                             # the cpu recipe on a CPU
    python train/run.py --shards shards --out runs/tiny --preset tiny --epochs 2   # any flag replaces the recipe's
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train/run.py --shards shards ...         # 2 CPU ranks

The recipe (train/recipes.py) follows the device unless --recipe names one; every TrainConfig and VAEConfig field
is a flag.

`--batch-size` is the global batch: each of N processes loads 1/N of it, and the schedules (warm-up, KL ramp,
recentring) follow the images seen, so 1, 2 or 8 processes train the same curve, draw the same noise for an
image (keyed by the image, `model.noise`) and resume each other's checkpoints.

Reads top to bottom: `setup` (config, Accelerate, loaders, model, optimizer, EMA, compile + DDP, resume), then
`train`'s loop of `train_one_epoch` (one `train.step.TrainStep` per batch) and `end_of_epoch` (validation with
the EMA weights, figures), then `finish`.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch train/run.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file

from common.device import require_usable_gpu
from common.errors import UserError, report_user_error
from common.exit import exit_process
from loaders import Loader, make_loader
from loaders.shards import first_images
from model import VAE, bits_per_dim, harmonic_metric
from model.io import MODEL_JSON, MODEL_WEIGHTS, save_vae
from model.noise import image_seeds
from model.split_pass import split_sums, summarize
from model.vae import VAEConfig, recentre_codes
from train.checkpoint import VAE_FOLDER, checkpoint_name, commit_checkpoint, latest_checkpoint, partial_path
from train.config import TrainConfig
from train.recipes import RecipeChoice, resolve
from train.figures import save_samples, write_figures
from train.objective import EMA, VAEObjective, kl_weight, lr_factor
from train.perceptual import build_perceptual
from train.rate import RateControl
from train.phases import ExtraPhases, extra_phases
from train.step import TrainStep, make_optimizer

console = Console()
CALIBRATION_STEPS = 30  # --minutes: steps timed before planning (fewer if the warm-up is shorter)
VALID_TIMED_BATCHES = 2  # --minutes: validation batches timed (after one untimed) to plan validation's cost
# Validation keeps no activations for a backward pass, so it takes batches this many times the training one.
VALID_BATCH_SCALE = 4
FIGURE_SECONDS = 1.0  # per epoch, the figures (rank 0)
TRAINER_STATE = "trainer.pt"  # in a run checkpoint: optimizer(s), position, logs, each rank's running sums
TRAINING_WEIGHTS = "model.safetensors"  # in a run checkpoint: the trained (non-EMA) weights, the VAE's own keys
TRACKER_PROJECT = "celeba-vae"  # --report-to: the W&B project; TensorBoard writes to OUT/celeba-vae/


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class TrainerState:
    """Where the run is; checkpointed with the rest so `--resume` continues exactly. The epoch is the number of
    validated epochs, and the position inside it follows from the step (`Run.batch_in_epoch`); the running sums
    are the step's (`TrainStep`), this rank's share of the run's."""

    step: int
    planned_steps: int  # --minutes: the step count the budget holds, fixed after the first steps (0: not yet)
    epoch_sums: torch.Tensor  # this rank's sums of the step's stat_names over the epoch's images, then their count
    code_sums: torch.Tensor  # this rank's sum of the codes mu since the last recentring, then their count
    steps_log: list[dict] = field(default_factory=list)
    epochs_log: list[dict] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return len(self.epochs_log)

    def sums(self) -> torch.Tensor:
        return torch.cat([self.epoch_sums, self.code_sums])

    def state_dict(self, rank_sums: torch.Tensor) -> dict:
        """`rank_sums` [processes, n]: every rank's `sums()`, gathered."""
        return {"step": self.step, "planned_steps": self.planned_steps, "rank_sums": rank_sums,
                "steps_log": self.steps_log, "epochs_log": self.epochs_log}

    def load_state_dict(self, state: dict, rank: int, world: int) -> None:
        """Each rank takes its own sums back when the process count is the checkpoint's; otherwise the first
        takes the run's totals and the others start from zero (the reductions over ranks see the same sums)."""
        self.step, self.planned_steps = state["step"], state["planned_steps"]
        self.steps_log, self.epochs_log = state["steps_log"], state["epochs_log"]
        rank_sums = state["rank_sums"]
        mine = (rank_sums[rank] if len(rank_sums) == world else
                rank_sums.sum(0) if rank == 0 else torch.zeros_like(rank_sums[0]))
        split = len(self.epoch_sums)
        self.epoch_sums.copy_(mine[:split])
        self.code_sums.copy_(mine[split:])


@dataclass
class LogWindow:
    """Throughput and data wait over the steps since the last log line (the stat sums are the step's)."""

    started: float = field(default_factory=time.perf_counter)
    waited: float = 0.0
    steps: int = 0

    def reset(self) -> None:
        self.started, self.waited, self.steps = time.perf_counter(), 0.0, 0


@dataclass
class Run:
    """Everything the loop touches, built once by `setup`."""

    cfg: TrainConfig
    choice: RecipeChoice
    accelerator: Accelerator
    train_loader: Loader
    valid_loader: Loader
    vae: VAE
    ema: EMA
    ema_vae: VAE  # the EMA weights are copied in to validate, draw and export
    train_step: TrainStep
    optimizer: torch.optim.Optimizer
    phases: ExtraPhases | None  # the model kind's own phases (the adversarial autoencoder's)
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
    lr: float = 0.0  # the last step's, for the log

    @property
    def batch_in_epoch(self) -> int:
        return self.state.step - self.state.epoch * len(self.train_loader)

    @property
    def images(self) -> int:
        """Training images seen: the schedules' clock, the same for any number of processes."""
        return self.state.step * self.cfg.batch_size

    @property
    def schedule_images(self) -> int:
        """--epochs x images per epoch (--max-steps only stops early), or the --minutes plan: made after the
        first steps, all inside the warm-up where the length does not matter yet, and resumed from the state."""
        steps = self.state.planned_steps if self.cfg.minutes else self.cfg.epochs * len(self.train_loader)
        return steps * self.cfg.batch_size

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


def setup(cfg: TrainConfig, model_cfg: VAEConfig, choice: RecipeChoice) -> Run:
    on_cuda = torch.cuda.is_available() and not cfg.cpu
    precision = {"auto": "bf16" if on_cuda else "no", "bf16": "bf16", "fp32": "no"}[cfg.precision]
    trackers = None if cfg.report_to == "none" else cfg.report_to
    accelerator = Accelerator(mixed_precision=precision, cpu=cfg.cpu, log_with=trackers,
                              project_config=ProjectConfiguration(project_dir=cfg.out))
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    check_launch(cfg, world)
    saved = checkpoint_state(resume_path(cfg, accelerator), cfg, model_cfg) if cfg.resume else None
    set_seed(cfg.seed)  # the same initial weights on every rank; the training noise is keyed by image

    # Data: every loader delivers uint8 batches already on `device`; ranks get disjoint, equal parts of each
    # global batch (rank r takes every world-th image of it, so the union is the 1-process batch).
    shards = Path(cfg.shards)
    per_rank = cfg.batch_size // world
    try:
        train_loader = make_loader(cfg.loader, shards / "train", per_rank, device, rank=rank, world_size=world,
                                   seed=cfg.seed, shuffle=True, drop_last=True, num_workers=cfg.num_workers)
    except ValueError as err:  # a split too small for one global batch
        raise UserError(f"{shards / 'train'}: {err} (--batch-size is the global batch of {world} processes)") from None
    valid_loader = make_loader(cfg.loader, shards / "valid", per_rank * VALID_BATCH_SCALE, device, rank=rank,
                               world_size=world, seed=cfg.seed, shuffle=False, drop_last=False,
                               num_workers=cfg.num_workers)
    record = {**choice.record(), **dataclasses.asdict(cfg), **model_cfg.to_dict()}
    if accelerator.is_main_process:
        console.print(choice.line())
        cfg.out_path.mkdir(parents=True, exist_ok=True)
        (cfg.out_path / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    # Trackers take flat scalars and strings: tuples (channels, ranges) and None as their text.
    accelerator.init_trackers(TRACKER_PROJECT, {key: value if isinstance(value, (bool, int, float, str)) else
                                                str(value) for key, value in record.items()})

    vae = VAE(model_cfg).to(device)
    perceptual = build_perceptual(cfg.perceptual, device) if cfg.perceptual else None
    objective = VAEObjective(vae, perceptual, cfg.perceptual_weight)
    phases = extra_phases(vae, cfg)  # the AAE's adversarial phases, beside the reconstruction step
    optimizer = make_optimizer(vae, cfg.lr, cfg.weight_decay)
    ema = EMA(vae, cfg.ema_decay)
    ema_vae = copy.deepcopy(vae).eval().requires_grad_(False)

    # Compile once (not per epoch), then DDP.
    step_module = torch.compile(objective) if compiles(cfg) else objective
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    rate = RateControl(cfg.rate_target, cfg.rate_lr, cfg.beta, device) if cfg.rate_target else None
    train_step = TrainStep(vae, step_module, optimizer, ema, accelerator, cfg.grad_clip, phases, rate)
    state = TrainerState(0, 0, train_step.epoch_sums, train_step.code_sums)
    main_process = accelerator.is_main_process
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console,
                        disable=not main_process)
    bar = progress.add_task("train", total=len(train_loader), epoch=0, stats="")
    run = Run(cfg, choice, accelerator, train_loader, valid_loader, vae, ema, ema_vae, train_step, optimizer,
              phases, state, LogWindow(), progress, bar,
              open(cfg.out_path / "metrics.jsonl", "a") if main_process else None,
              # The first 16 test images, fixed across epochs: 8 to reconstruct, 4 pairs to interpolate between.
              first_images(shards / "test", 16).to(device) if cfg.figures and main_process else None)
    if saved is not None:
        resume(run, *saved)
    progress.update(bar, epoch=state.epoch)
    return run


def check_launch(cfg: TrainConfig, world: int) -> None:
    """Stop before any work, in one line, on settings that cannot train."""
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and does not split evenly over {world} "
                        f"processes; use a multiple of {world}")
    if cfg.rate_target and cfg.kl_anneal == "cyclical":
        raise UserError("--rate-target replaces the KL weight after a linear warm-up: use --kl-anneal linear or none")
    if cfg.minutes and cfg.warmup_images < 3 * cfg.batch_size:
        raise UserError(f"--minutes plans the step count during the LR warm-up: use --warmup-images "
                        f"{3 * cfg.batch_size} or more (3 global batches)")


def resume_path(cfg: TrainConfig, accelerator: Accelerator) -> Path:
    """The checkpoint to resume: --resume, or the newest in OUT/checkpoints as the first process sees it. Every
    process must find it complete (a node-local --out on a multi-node run does not)."""
    if cfg.resume == "latest":
        found = [latest_checkpoint(cfg.out_path)]
        broadcast_object_list(found)
        if found[0] is None:
            raise UserError(f"--resume latest: no checkpoint in {cfg.out_path / 'checkpoints'}")
        path = Path(found[0])
    else:
        path = Path(cfg.resume)
    missing = [name for name in (TRAINING_WEIGHTS, TRAINER_STATE, f"{VAE_FOLDER}/{MODEL_WEIGHTS}",
                                 f"{VAE_FOLDER}/{MODEL_JSON}") if not (path / name).is_file()]
    complete = torch.tensor(0 if missing else 1, device=accelerator.device)
    if not accelerator.reduce(complete, "min").item():
        where = f"lacks {', '.join(missing)}" if missing else "is incomplete on another node"
        raise UserError(f"--resume: checkpoint {path} {where}; a checkpoint must be complete on every node, so "
                        f"--out must be a folder all nodes share")
    return path


def checkpoint_state(path: Path, cfg: TrainConfig, model_cfg: VAEConfig) -> tuple[Path, dict]:
    """(path, its trainer state), once the checkpoint is known to fit this launch: the model and the global
    batch must be the checkpoint's (the process count, compilation and device need not)."""
    saved_model = json.loads((path / VAE_FOLDER / MODEL_JSON).read_text())["config"]
    ours = json.loads(json.dumps(model_cfg.to_dict()))  # tuples as the JSON's lists
    differs = [f"{name} {saved_model.get(name)!r} (checkpoint) vs {value!r} (this launch)"
               for name, value in ours.items() if saved_model.get(name) != value]
    if differs:
        raise UserError(f"--resume {path}: the model differs from the checkpoint's: {'; '.join(differs)}; "
                        f"launch with the checkpoint's model settings")
    trainer = torch.load(path / TRAINER_STATE, map_location="cpu")  # the optimizer moves its state to the params
    if trainer["batch_size"] != cfg.batch_size:
        raise UserError(f"--resume {path}: the run's global batch is {trainer['batch_size']}, not "
                        f"{cfg.batch_size}; use --batch-size {trainer['batch_size']}")
    return path, trainer


def resume(run: Run, path: Path, trainer: dict) -> None:
    """Continue from a checkpoint written by any launch: compiled or eager, any number of processes, any device
    (the weights carry the VAE's own keys and are copied into this launch's tensors)."""
    accelerator = run.accelerator
    run.vae.load_state_dict(load_file(path / TRAINING_WEIGHTS))
    run.ema.load_state_dict(load_file(path / VAE_FOLDER / MODEL_WEIGHTS))
    run.optimizer.load_state_dict(trainer["optimizer"])
    run.train_step.attach(run.optimizer)
    if run.phases is not None:
        run.phases.load_state_dict(trainer["phases"])
    if run.train_step.rate is not None and trainer["rate"] is not None:  # None: a run that switched it on here
        run.train_step.rate.load_state_dict(trainer["rate"])
    run.state.load_state_dict(trainer["state"], accelerator.process_index, accelerator.num_processes)
    console.print(f"resumed from {path} at step {run.state.step} ({run.images:,} images, epoch {run.state.epoch}; "
                  f"written by {trainer['world_size']} process(es))")


def compiles(cfg: TrainConfig) -> bool:
    return cfg.compile == "on" or (cfg.compile == "auto" and torch.cuda.is_available() and not cfg.cpu)


def main(argv: list[str] | None = None) -> int:
    on_cuda = torch.cuda.is_available()
    cfg, model_cfg, choice = resolve(argv, "cuda" if on_cuda else "cpu",
                                     torch.cuda.get_device_name() if on_cuda else "")
    try:
        require_usable_gpu(allow_cpu=cfg.cpu)
        run = setup(cfg, model_cfg, choice)
    except UserError as err:
        return report_user_error(err) if PartialState().is_main_process else 1
    train(run)
    return 0


def train(run: Run) -> None:
    if run.figure_images is not None and run.state.step == 0:  # what the prior gives before any training
        save_samples(run.out / "figures" / "samples_init.png", run.vae.eval(), run.cfg.seed,
                     "prior samples z = temp * eps, before training")
        run.vae.train()
    with run.progress:
        while run.state.epoch < run.epochs:
            if not train_one_epoch(run):
                break  # --max-steps reached
            end_of_epoch(run)
    finish(run)


def train_one_epoch(run: Run) -> bool:
    """Train from the state's position to the end of its epoch (or of the planned steps, if that comes first);
    False when --max-steps stopped it before. Nothing here waits for the device but the log, the recentring and
    the checkpoints, every so many steps."""
    cfg, state, window, accelerator = run.cfg, run.state, run.window, run.accelerator
    run.train_loader.set_epoch(state.epoch, start_batch=run.batch_in_epoch)
    run.progress.update(run.bar, completed=run.batch_in_epoch, epoch=state.epoch)
    batches = iter(run.train_loader)
    while True:
        wait_started = time.perf_counter()
        batch = next(batches, None)  # the only place the step can wait for data
        window.waited += time.perf_counter() - wait_started
        if batch is None or (state.planned_steps and state.step == state.planned_steps):
            return True
        # With rate control the multiplier takes over from beta once the linear warm-up is done (train.rate).
        warmed_up = cfg.kl_anneal == "none" or run.images >= cfg.kl_anneal_images
        weight = (None if run.train_step.rate is not None and warmed_up else
                  kl_weight(run.images, cfg.kl_anneal, cfg.beta, cfg.kl_anneal_images, cfg.kl_cycle_ramp))
        run.lr = cfg.lr * lr_factor(run.images + cfg.batch_size, cfg.warmup_images, run.schedule_images,
                                    cfg.min_lr_ratio)
        seeds = image_seeds(batch.keys, cfg.seed, accelerator.device, epoch=state.epoch)
        run.train_step(batch.images, seeds, state.step, weight, run.lr)
        state.step += 1
        window.steps += 1
        run.progress.advance(run.bar)
        if cfg.minutes and not state.planned_steps:
            synchronize(accelerator.device)  # the calibration times whole steps, not their launch
            plan_budget(run, state.step, time.perf_counter() - wait_started)
        if run.images // cfg.recentre_images > (run.images - cfg.batch_size) // cfg.recentre_images:
            stop_if_nonfinite(run)
            recentre(run)
        if state.step % cfg.log_every == 0:
            stop_if_nonfinite(run)
            log_steps(run)
        if state.step % cfg.checkpoint_every == 0:
            stop_if_nonfinite(run)
            save_checkpoint(run)
        if cfg.max_steps and state.step >= cfg.max_steps:
            return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stop_if_nonfinite(run: Run) -> None:
    """If a step since the last look had a non-finite gradient, checkpoint the state before it and stop: the
    optimizer and the EMA skipped it and every step after, and the sums left them out."""
    bad = run.train_step.first_bad_step()
    if bad is None:
        return
    run.state.step = bad
    saved = save_checkpoint(run)
    raise NonFiniteLoss(f"non-finite loss/gradient at step {bad}; the last good state is saved in {saved}")


def recentre(run: Run) -> None:
    """Move the codes (live and EMA weights alike) to the mean of those seen since the last time, over all ranks
    (model.vae.recentre_codes, an exact reparametrisation; every --recentre-images images). The KL pulls that
    mean to 0 only as |mean|^2 / 2, a whisper beside the reconstruction's gradients, so runs left it 3-4 units
    off the origin: there z = 0.2 eps decodes 5-7 dB further from the average face than the codes' own centre
    does (BENCHMARKS.md)."""
    sums = run.accelerator.reduce(run.state.code_sums, "sum")
    shift = (sums[:-1] / sums[-1]).float()
    recentre_codes(run.vae.state_dict(), shift)
    recentre_codes(run.ema.state_dict(), shift)
    run.state.code_sums.zero_()


def plan_budget(run: Run, done: int, step_seconds: float) -> None:
    """--minutes: once `done` steps are timed, fix the total step count the budget holds.

    Planned inside the warm-up, whose rates do not depend on the schedule's length. The steps are timed from
    the batch fetch to the optimizer step, the first one (one-off costs) left out; validation is timed on a few
    of its batches (after an untimed one) and, with the figures, counted per epoch. The timings are maximised
    over ranks, so every rank plans the same number.
    """
    state, cfg = run.state, run.cfg
    if done > 1:
        run.calibration_seconds += step_seconds
    if done < min(CALIBRATION_STEPS, cfg.warmup_images // cfg.batch_size - 1):
        return
    valid_seconds = validation_seconds(run)
    timings = torch.tensor([run.calibration_seconds / (done - 1), valid_seconds, time.perf_counter() - run.started],
                           device=run.accelerator.device, dtype=torch.float64)
    seconds_per_step, valid_seconds, elapsed = run.accelerator.reduce(timings, "max").tolist()
    per_epoch = valid_seconds + FIGURE_SECONDS * cfg.figures
    per_step = seconds_per_step + per_epoch / len(run.train_loader)
    state.planned_steps = done + max(1, int((cfg.minutes * 60 - elapsed) / per_step))
    console.print(f"--minutes {cfg.minutes:g}: {seconds_per_step * 1e3:.0f} ms per step, validation "
                  f"{valid_seconds:.1f} s -> {state.planned_steps:,} steps "
                  f"({state.planned_steps / len(run.train_loader):.1f} epochs)")


def validation_seconds(run: Run) -> float:
    """The measured time of one whole validation pass, from VALID_TIMED_BATCHES of its batches."""
    run.ema.copy_to(run.ema_vae)
    run.valid_loader.set_epoch(0)
    batches = itertools.islice(iter(run.valid_loader), VALID_TIMED_BATCHES + 1)
    validate(run, itertools.islice(batches, 1))  # one-off costs
    synchronize(run.accelerator.device)
    started = time.perf_counter()
    timed = list(batches)
    validate(run, timed)
    synchronize(run.accelerator.device)
    return (time.perf_counter() - started) / max(1, len(timed)) * len(run.valid_loader)


def validate(run: Run, batches) -> dict:
    """The EMA model's sums over `batches` (this rank's), under the run's precision."""
    with run.accelerator.autocast():
        return split_sums(run.ema_vae, batches, lambda t: t, seed=run.cfg.seed)


def log_steps(run: Run) -> None:
    """One metrics.jsonl line for the steps since the last one (stats reduced over ranks) and the progress bar."""
    state, window, world = run.state, run.window, run.accelerator.num_processes
    elapsed = time.perf_counter() - window.started
    window_sums = run.train_step.window_sums
    window_means = run.accelerator.reduce(window_sums, "sum") / (window.steps * world)
    means = dict(zip(run.train_step.stat_names, window_means.tolist()))
    window_sums.zero_()
    harmonic = harmonic_metric(means["discretized_nll"], means["kl"], latent_dim=run.vae.cfg.latent_dim)
    record = {"kind": "step", "step": state.step, "epoch": state.epoch, "images": run.images, **means,
              "bpd": bits_per_dim(means["discretized_nll"] + means["kl"]), "harmonic": harmonic.h,
              "lr": run.lr, "kl_weight": float(run.train_step.kl_weight),
              "images_per_s": run.cfg.batch_size * window.steps / elapsed,
              "data_wait_share": window.waited / elapsed}
    state.steps_log.append(record)
    run.log_record(record)
    # The trackers' x-axis is the images seen, the schedules' clock, so runs with other batches line up.
    run.accelerator.log({f"train/{key}": value for key, value in record.items() if key not in ("kind", "images")},
                        step=run.images)
    run.progress.update(run.bar, stats=(f"loss {record['loss']:.1f} nll {record['gaussian_nll']:.1f} "
                                        f"kl {record['kl']:.1f} bpd {record['bpd']:.3f} "
                                        f"{record['images_per_s']:.0f} img/s wait {100 * record['data_wait_share']:.1f}%"))
    window.reset()


def end_of_epoch(run: Run) -> None:
    """Train means, validation with the EMA weights (reduced over ranks), figures; then the next epoch starts."""
    stop_if_nonfinite(run)
    state, accelerator, latent = run.state, run.accelerator, run.vae.cfg.latent_dim
    sums = accelerator.reduce(state.epoch_sums, "sum").tolist()
    train_means = dict(zip(run.train_step.stat_names, [value / sums[-1] for value in sums[:-1]]))
    run.ema.copy_to(run.ema_vae)
    run.valid_loader.set_epoch(0)
    with accelerator.autocast():
        valid = summarize(split_sums(run.ema_vae, run.valid_loader, lambda t: accelerator.reduce(t, "sum"),
                                     seed=run.cfg.seed), latent)
    record = {"kind": "epoch", "epoch": state.epoch, "step": state.step, "train": train_means, "valid": valid}
    state.epochs_log.append(record)
    state.epoch_sums.zero_()
    run.log_record(record)
    run.accelerator.log({f"{split}_epoch/{key}": value for split in ("train", "valid")
                         for key, value in record[split].items() if isinstance(value, (int, float))}, step=run.images)
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
    """The training weights (the VAE's own keys, whatever the launch), the EMA weights folder, and the trainer
    state with every rank's running sums, written by the first process as `.partial` and renamed only after
    every process has reached this point."""
    state, accelerator, cfg = run.state, run.accelerator, run.cfg
    final = run.out / "checkpoints" / checkpoint_name(state.step)
    rank_sums = accelerator.gather(state.sums()[None])
    if accelerator.is_main_process:
        partial = partial_path(final)
        if partial.exists():  # left by a crash
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        save_file({name: value.contiguous() for name, value in run.vae.state_dict().items()},
                  partial / TRAINING_WEIGHTS)
        torch.save({"optimizer": run.optimizer.state_dict(),
                    "phases": run.phases.state_dict() if run.phases else [],
                    "rate": run.train_step.rate.state_dict() if run.train_step.rate else None,
                    "state": state.state_dict(rank_sums.cpu()), "batch_size": cfg.batch_size,
                    "world_size": accelerator.num_processes}, partial / TRAINER_STATE)
        meta = {"step": state.step, "epoch": state.epoch, "images": run.images, "shards": cfg.shards,
                "dataset": run.train_loader.split.dataset, **run.choice.record()}
        save_vae(partial / VAE_FOLDER, run.vae, meta, state_dict=run.ema.state_dict())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        commit_checkpoint(final, cfg.keep_checkpoints)
    accelerator.wait_for_everyone()
    return final


def finish(run: Run) -> None:
    """The final checkpoint and `train_summary.json`, with proof that DDP kept every rank's weights identical."""
    accelerator, state = run.accelerator, run.state
    stop_if_nonfinite(run)
    final = save_checkpoint(run)
    params = list(run.vae.parameters())
    checksums = accelerator.gather(torch.stack([p.detach().double().sum() for p in params])[None].to(accelerator.device))
    if accelerator.is_main_process:
        run.metrics_file.close()
        summary = {"step": state.step, "epoch": state.epoch, "images": run.images,
                   "world_size": accelerator.num_processes, "batch_size": run.cfg.batch_size,
                   "device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision,
                   "compiled": compiles(run.cfg), "planned_steps": state.planned_steps, "minutes": run.cfg.minutes,
                   "train_seconds": time.perf_counter() - run.started, "checkpoint": str(final),
                   "ranks_in_sync": bool((checksums == checksums[0]).all()),
                   "last_epoch": (state.epochs_log or [None])[-1]}
        (run.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"done at step {state.step}; checkpoint {final}")
    accelerator.end_training()
    if torch.distributed.is_initialized():  # stop the process group's threads before the interpreter's teardown
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    exit_process(main())
