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


def level_moments(params: torch.Tensor, powers: tuple[int, ...]) -> list[torch.Tensor]:
    """E[(level / 127.5)^p] per sub-pixel for each p, [B, 3, H, W] each. One matrix product over the 256
    probabilities: 1.5x as fast on a CPU as a broadcast product and a sum over that dimension, which writes and
    reads the whole [B, 3, 256, H, W] tensor once more."""
    b, c, h, w = params.shape
    probs = torch.softmax(categorical_logits(params), dim=2).view(b, c // LEVELS, LEVELS, h * w)
    levels = torch.arange(LEVELS, device=params.device, dtype=torch.float32) / 127.5
    weights = torch.stack([levels**power for power in powers])  # [P, 256]
    with torch.autocast(params.device.type, enabled=False):  # float32 sums of 256 terms, also under bf16
        moments = torch.matmul(weights, probs)  # [B, 3, P, H*W]
    return [moments[:, :, i].view(b, c // LEVELS, h, w) for i in range(len(powers))]


def categorical_mean(params: torch.Tensor) -> torch.Tensor:
    """The expected grey level per sub-pixel, in model units [B, 3, H, W]."""
    return level_moments(params, (1,))[0] - 1.0


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
        first, second = level_moments(x_params, (1, 2))
        return (second - first.square()).clamp_min(0).sqrt().flatten(1).mean(1)
