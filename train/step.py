"""The trainer's optimizer step, enqueued on the device without ever waiting for it.

Everything that changes from step to step is a device tensor updated in place (the KL weight, the learning
rate, which fused AdamW reads as a tensor) or keyed by image (the noise, `model.noise`); the gradient norm's
finiteness is kept on the device as the optimizer's `found_inf` flag, so from the first non-finite step on the
fused kernel skips every update and the EMA stands still. The trainer reads the flag every `--log-every` steps
and before anything that acts on the weights or the sums (recentring, checkpoints, validation), and then stops
with the state of the step before the first bad one: nothing a skipped step touched is kept.
"""
from __future__ import annotations

import math

import torch
from accelerate import Accelerator

from model.noise import POSTERIOR, PRIOR, keyed_normal
from model.vae import VAE
from train.objective import EMA, STAT_NAMES
from train.phases import ExtraPhases
from train.rate import RateControl


def make_optimizer(vae: VAE, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Fused AdamW over the encoder and decoder (a model kind's extra modules have their own, `train.phases`), no
    decay on biases and norms. Fused: one kernel per step, a tensor learning rate and a skip flag; the CPU has it
    too."""
    autoencoder = list(vae.autoencoder().parameters())
    return torch.optim.AdamW([{"params": [p for p in autoencoder if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in autoencoder if p.ndim < 2], "weight_decay": 0.0}], lr=lr,
                             betas=(0.9, 0.99), fused=True)


class TrainStep:
    """One optimizer step of the (compiled, DDP-wrapped) objective: clip, fused AdamW, EMA, and the running sums
    the trainer keeps (the epoch's stat sums, the codes' sums for the recentring, the log window's stats), then
    the model kind's own phases, if it has any."""

    def __init__(self, vae: VAE, module: torch.nn.Module, optimizer, ema: EMA, accelerator: Accelerator,
                 grad_clip: float, phases: ExtraPhases | None = None, rate: RateControl | None = None):
        device = accelerator.device
        self.vae, self.module, self.optimizer, self.ema, self.accelerator = vae, module, optimizer, ema, accelerator
        self.phases, self.rate = phases, rate
        self.stat_names = STAT_NAMES + (phases.stat_names if phases else ())
        self.params = list(vae.autoencoder().parameters())
        self.grad_clip = grad_clip if grad_clip > 0 else math.inf
        self.kl_weight = torch.zeros((), device=device)
        self.lr = torch.zeros((), device=device)
        # 1 from the first non-finite gradient norm on; the fused optimizer skips its update while it is set.
        self.nonfinite = torch.zeros((), device=device)
        self.first_nonfinite = torch.zeros((), dtype=torch.long, device=device)
        self.attach(optimizer)
        self.epoch_sums = torch.zeros(len(self.stat_names) + 1, device=device, dtype=torch.float64)  # + image count
        self.code_sums = torch.zeros(vae.cfg.latent_dim + 1, device=device, dtype=torch.float64)  # + code count
        self.window_sums = torch.zeros(len(self.stat_names), device=device)

    def attach(self, optimizer) -> None:
        """Point the (Accelerate-wrapped) optimizer at the step's rate and flag; again after loading its state."""
        inner = optimizer.optimizer
        for group in inner.param_groups:
            group["lr"] = self.lr
        inner.found_inf = self.nonfinite

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor, step: int, kl_weight: float | None,
                 lr: float) -> None:
        """Train on uint8 `images` whose noise seeds (`model.noise.image_seeds`) are `seeds`; `step` counts the
        optimizer steps before this one, `kl_weight` and `lr` are this step's (`kl_weight` None: the rate
        control's multiplier, which this step's KL then moves)."""
        if kl_weight is None:
            self.kl_weight.copy_(self.rate.multiplier)
        else:
            self.kl_weight.fill_(kl_weight)
        self.lr.fill_(lr)
        latent = self.vae.cfg.latent_dim
        with self.accelerator.autocast():
            loss, stats, codes = self.module(images, self.kl_weight, keyed_normal(seeds, 1, latent, POSTERIOR)[0])
        self.accelerator.backward(loss)
        # The norm of the all-reduced gradients: the same on every rank, so every rank skips the same steps.
        norm = self.accelerator.clip_grad_norm_(self.params, self.grad_clip)
        bad = ~torch.isfinite(norm)
        self.first_nonfinite.copy_(torch.where(bad & (self.nonfinite == 0), step, self.first_nonfinite))
        self.nonfinite.copy_(torch.maximum(self.nonfinite, bad.float()))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.phases is not None:  # eager phases that wait on the host anyway
            extra = torch.zeros(len(self.phases.stat_names), device=stats.device)
            if not self.nonfinite.item():
                with self.accelerator.autocast():
                    extra = self.phases.step(images, codes, keyed_normal(seeds, 1, latent, PRIOR)[0], lr,
                                             lambda t: self.accelerator.reduce(t, "mean"))
            stats = torch.cat([stats, extra])
        good = self.nonfinite == 0
        if kl_weight is None:  # the run's mean KL (every rank's batch), so every rank holds the same multiplier
            kl = self.accelerator.reduce(stats[STAT_NAMES.index("kl")].detach(), "mean")
            self.rate.update(torch.where(good, kl, self.rate.target))
        self.ema.update(self.vae, step, good.float())
        stats = torch.where(good, stats.detach(), 0.0)
        codes = codes.double()
        self.code_sums += torch.where(good, torch.cat([codes.sum(0), codes.new_full((1,), len(codes))]), 0.0)
        self.epoch_sums += torch.cat([stats.double(), good.double()[None]])
        self.window_sums += stats

    def first_bad_step(self) -> int | None:
        """The first step whose gradient was not finite, or None (waits for the device: call it seldom)."""
        return int(self.first_nonfinite) if self.nonfinite.item() else None
