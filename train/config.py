"""Training configuration: one plain dataclass; every field is a `--flag` of `train/run.py` (train/recipes.py lays
the recipe's values and the command line's flags over it)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

TRACKERS = ("none", "tensorboard", "wandb")


@dataclass(kw_only=True)
class TrainConfig:
    shards: str = "shards"  # build-shards output folder (train/, valid/, test/ inside)
    out: str = "runs/vae"  # run folder: checkpoints/, figures/, metrics.jsonl, config.json
    loader: str = "resident"  # resident | webdataset | dali
    num_workers: int = 2  # webdataset loader worker processes
    # --model aae: lambda in (0, 1], the reconstruction's share; the regularisation phase's learning rate
    # is the reconstruction's times (1 - lambda) / lambda (0.5: equal rates; 1: a plain autoencoder)
    aae_lambda: float = 0.5
    # optimisation; the fields without a default are the recipe's (train/recipes.py)
    # all processes together (each loads batch_size / processes); the course warns that very large batches collapse
    # to the mean
    batch_size: int
    # The budget: --epochs, or (> 0) a wall-clock budget in minutes whose step count is planned. Either flag
    # replaces the recipe's budget.
    epochs: int = 0
    minutes: float = 0.0
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = run all epochs)
    lr: float
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_images: int  # the LR's linear warm-up, in training images (schedules follow images seen)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # every this many training images the codes are moved to their mean since the last time (model.vae.recentre_codes)
    recentre_images: int = 3200
    # KL: loss = NLL + beta * w(step) * KL, with w the annealing weight in [0, 1]
    beta: float = 1.0
    kl_anneal: str = "linear"  # linear | cyclical | none
    kl_anneal_images: int  # linear: ramp length; cyclical: period (training images)
    kl_cycle_ramp: float = 0.5  # cyclical: fraction of each period spent ramping
    # Rate control (train.rate): > 0 holds the KL at this many nats per image with a Lagrange multiplier that
    # replaces beta once the linear KL warm-up is over; 0 keeps the fixed beta
    rate_target: float = 0.0
    rate_lr: float = 0.01  # the multiplier's step: log lambda += rate_lr * (KL - target) / target per step
    # optional perceptual loss: torchvision:<arch> (weights from the local torch cache) | classifier:<ckpt>
    perceptual: str = ""
    # The NLL is a sum over 12,288 sub-pixels and the feature distance a mean of squares: at 1e5 the project's
    # classifier's term pulls about a third as hard as the NLL (gradient norms, the CPU recipe's trained model).
    perceptual_weight: float = 1e5
    # runtime
    cpu: bool = False  # train on the CPU even where nvidia-smi lists a GPU
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: str = "auto"  # auto (on for CUDA) | on | off
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2
    figures: bool = True  # per-epoch PNG figures
    # Also log the metrics to TensorBoard (OUT/celeba-vae/) or Weights & Biases through Accelerate's trackers;
    # metrics.jsonl is written either way.
    report_to: str = dataclasses.field(default="none", metadata={"choices": TRACKERS})
    resume: str = ""  # a checkpoint folder, or "latest" (the newest in OUT/checkpoints)

    @property
    def out_path(self) -> Path:
        return Path(self.out)

