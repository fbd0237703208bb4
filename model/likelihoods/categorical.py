"""A 256-way categorical per sub-pixel: exact and unordered (it does not know that level 100 is
next to 101). Logits [B, 3*256, H, W], channel-major (R's 256, G's, B's)."""
from __future__ import annotations

import torch

from model.likelihoods.base import DiscreteLikelihood, register
from model.metrics import as_float32, sum_per_image

LEVELS = 256


def categorical_logits(params: torch.Tensor) -> torch.Tensor:
    """[B, 3*256, H, W] -> [B, 3, 256, H, W] float32 logits."""
    b, c, h, w = params.shape
    return as_float32(params).view(b, c // LEVELS, LEVELS, h, w)


def categorical_nll(x_uint8: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """-log P(x) under a 256-way categorical per sub-pixel, summed per image: [B], nats, >= 0."""
    logits = categorical_logits(params)
    index = x_uint8.to(logits.device).long().unsqueeze(2)  # [B, 3, 1, H, W]
    picked = logits.gather(2, index).squeeze(2)
    return sum_per_image(torch.logsumexp(logits, dim=2) - picked)


def categorical_mean(params: torch.Tensor) -> torch.Tensor:
    """The expected grey level per sub-pixel, in model units [B, 3, H, W]."""
    levels = torch.arange(LEVELS, device=params.device, dtype=torch.float32).view(1, 1, LEVELS, 1, 1)
    return (torch.softmax(categorical_logits(params), dim=2) * levels).sum(2) / 127.5 - 1.0


@register
class Categorical(DiscreteLikelihood):
    """x_params: the [B, 3*256, H, W] logits; x_mean: the expected level. The training loss is the NLL itself."""

    name = "categorical"

    @property
    def out_channels(self) -> int:
        return self.cfg.in_channels * LEVELS

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return categorical_mean(params)

    def exact_nll(self, x_uint8: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return categorical_nll(x_uint8, params)

    def std(self, x_params: torch.Tensor, batch_size: int) -> torch.Tensor:
        probs = torch.softmax(categorical_logits(x_params), dim=2)
        levels = torch.arange(LEVELS, device=probs.device, dtype=torch.float32).view(1, 1, LEVELS, 1, 1) / 127.5
        variance = (probs * levels.square()).sum(2) - (probs * levels).sum(2).square()
        return variance.clamp_min(0).sqrt().flatten(1).mean(1)
