"""One Bernoulli per sub-pixel of the binarised image: each sub-pixel is observed as x >= 128 (the
binary-MNIST setting carried over to CelebA's grey levels); its likelihoods and bits/dim are those of the binary
data."""
from __future__ import annotations

import torch

from model.likelihoods.base import DiscreteLikelihood, register
from model.metrics import as_float32, sum_per_image

BINARIZE_THRESHOLD = 128


def binarize(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> 0 or 255 (x >= 128), still uint8: what a Bernoulli decoder observes."""
    return (x_uint8 >= BINARIZE_THRESHOLD).to(torch.uint8) * 255


def bernoulli_nll(x_uint8: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """-log P(binarize(x)) under independent Bernoullis per sub-pixel, summed per image: [B], nats, >= 0."""
    logits = as_float32(logits)
    target = (x_uint8.to(logits.device) >= BINARIZE_THRESHOLD).float()
    return sum_per_image(torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none"))


def bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """P(x = 255) per sub-pixel as a model-unit image: -1 (surely black) .. +1 (surely white)."""
    return 2.0 * torch.sigmoid(as_float32(logits)) - 1.0


@register
class Bernoulli(DiscreteLikelihood):
    """x_params: the [B, 3, H, W] logits of P(white); x_mean = P(white) as a model-unit image. The training loss
    is the NLL itself."""

    name = "bernoulli"
    eval_note = ("Bernoulli decoder: every likelihood here (NLL, bits/dim, n and H) is of the binarised images (each "
                 "sub-pixel x >= 128), binary data, not comparable with the 256-level decoders' numbers")

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return bernoulli_mean(params)

    def exact_nll(self, x_uint8: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return bernoulli_nll(x_uint8, params)

    def std(self, x_params: torch.Tensor, batch_size: int) -> torch.Tensor:
        p = torch.sigmoid(as_float32(x_params))
        return (2.0 * (p * (1 - p)).sqrt()).flatten(1).mean(1)  # the two outcomes sit 2 model units apart

    def observed(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return binarize(x_uint8)
