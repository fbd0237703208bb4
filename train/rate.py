"""Rate control: train to a target KL (the rate, nats per image) instead of a fixed KL weight beta.

The harmonic metric H = 2nk / (n + k) rewards a small KL per latent component (k = KL / (d ln 2)), the pictures a
large total KL. Left free, a larger latent buys a larger rate; held at C nats, the same information spreads over
more components, so k falls with d at equal reconstructions.

The KL weight becomes a Lagrange multiplier lambda of the constraint KL <= C, moved by dual ascent on its
logarithm after every step (the multiplicative update of GECO, Rezende & Viola 2018, applied to the rate):

    log lambda += rate_lr * (KL - C) / C,        loss = NLL + lambda * KL

so lambda grows while the run's mean batch KL exceeds C and shrinks while it falls short. The KL warm-up runs as
usual (weight beta * w(images)); the multiplier starts at beta and moves only once the warm-up is over, so the
decoder learns to use z before the constraint bites. The KL fed to the update is the mean over every rank's batch,
so all ranks hold the same multiplier, and the update is tensor arithmetic on the device (no host sync).
"""
from __future__ import annotations

import math

import torch

# lambda stays within [1e-3, 1e3]: far outside where a run at a sensible C ends, and it keeps one bad stretch of
# batches from driving the multiplier to where it needs thousands of steps to come back.
LOG_MULTIPLIER_RANGE = (math.log(1e-3), math.log(1e3))


class RateControl:
    """The multiplier of the constraint KL <= `target` nats per image; registered with Accelerate for checkpoints."""

    def __init__(self, target: float, rate_lr: float, beta: float, device: torch.device | str):
        if target <= 0 or rate_lr <= 0 or beta <= 0:
            raise ValueError(f"rate control needs a target, a rate lr and a beta > 0, got {target}, {rate_lr}, {beta}")
        self.target, self.rate_lr = target, rate_lr
        self.log_multiplier = torch.full((), math.log(beta), device=device, dtype=torch.float32)

    @property
    def multiplier(self) -> torch.Tensor:
        """lambda, a 0-dim tensor on the device."""
        return self.log_multiplier.exp()

    @torch.no_grad()
    def update(self, kl_mean: torch.Tensor) -> None:
        """One dual-ascent step from the run's mean KL (nats per image) of the step just taken."""
        step = self.rate_lr * (kl_mean.float() - self.target) / self.target
        self.log_multiplier.add_(step).clamp_(*LOG_MULTIPLIER_RANGE)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"log_multiplier": self.log_multiplier}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.log_multiplier.copy_(state["log_multiplier"])
