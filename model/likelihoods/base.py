"""What every decoder likelihood answers, and the registry that names them.

A decoder likelihood is one small class: the decoder holds one instance (`vae.decoder.likelihood`) and the
trainer and eval ask it, never its name. Adding one is a new module with a `@register`ed subclass of
`Likelihood`, imported by this package's `__init__`.
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn as nn


class NLLTerms(NamedTuple):
    train: torch.Tensor  # [B] nats: the reconstruction loss to differentiate (continuous Gaussian NLL, a
    #                      density; for the discrete likelihoods the discretized NLL itself)
    discretized: torch.Tensor  # [B] nats, -log P(x) over the 256 bins per sub-pixel, >= 0 (evaluation NLL)


class Likelihood:
    """One decoder family. `head` turns the decoder's last conv output into (x_mean, x_params): x_mean is the mean
    image in model units (what reconstructions, samples, PSNR and edits use), x_params whatever else the
    distribution needs; `nll` scores uint8 images under them.

    Running statistics (the shared sigma-VAE variance) are buffers of the decoder: `running_stats` gives their
    names and starting values, the decoder registers them (so they are saved with its weights, under its prefix:
    `decoder.shared_cov`), and `head` / `batch_params` receive the decoder to read and update them in place.
    Everything here runs inside the compiled training step: tensor ops only, no `float()` or `.item()`.
    `cfg` is the model's VAEConfig (model.vae, which imports this package).
    """

    name: ClassVar[str]
    # A fixed decoder sigma is a hyper-parameter, not a fit: eval also fits one global sigma on the valid split.
    fits_global_sigma: ClassVar[bool] = False
    eval_note: ClassVar[str | None] = None  # a caveat every evaluation report of such a model carries

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg) -> None:
        """Raise ValueError for a config this family cannot be built from."""

    @property
    def out_channels(self) -> int:
        """Channels of the decoder's output conv."""
        return self.cfg.in_channels

    def running_stats(self) -> dict[str, torch.Tensor]:
        """Name -> starting value of each buffer the decoder keeps for this likelihood."""
        return {}

    def head(self, out: torch.Tensor, decoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The output conv's [B, out_channels, H, W] -> (x_mean [B, C, H, W], x_params)."""
        raise NotImplementedError

    def batch_params(self, x: torch.Tensor, x_mean: torch.Tensor, x_params: torch.Tensor,
                     decoder: nn.Module) -> torch.Tensor:
        """x_params for a training-mode forward, given the batch x (model units): the head's, unless the family
        fits its parameters to the batch in closed form (and folds them into its running statistics)."""
        return x_params

    def nll(self, x_uint8: torch.Tensor, x_mean: torch.Tensor, x_params: torch.Tensor) -> NLLTerms:
        """Reconstruction NLL of uint8 images (what `observed` returns) under (x_mean, x_params)."""
        raise NotImplementedError

    def std(self, x_params: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The decoder's standard deviation per image [B], model units, averaged over sub-pixels: a training
        diagnostic of how sure the decoder has become."""
        raise NotImplementedError

    def observed(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """The images this decoder models, from the loader's uint8 batch."""
        return x_uint8


class DiscreteLikelihood(Likelihood):
    """A distribution over the grey levels themselves (or the binarised image): the output conv gives its
    parameters, and its training loss is its exact NLL. A subclass gives the mean image and the NLL."""

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean image [B, C, H, W] in model units."""
        raise NotImplementedError

    def exact_nll(self, x_uint8: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """-log P(x) per image [B], nats."""
        raise NotImplementedError

    def head(self, out: torch.Tensor, decoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(out), out

    def nll(self, x_uint8: torch.Tensor, x_mean: torch.Tensor, x_params: torch.Tensor) -> NLLTerms:
        nll = self.exact_nll(x_uint8, x_params)
        return NLLTerms(nll, nll)


LIKELIHOODS: dict[str, type[Likelihood]] = {}


def register(cls: type[Likelihood]) -> type[Likelihood]:
    """Class decorator: make a likelihood choosable by its `name` (VAEConfig.likelihood, --likelihood)."""
    if cls.name in LIKELIHOODS:
        raise ValueError(f"a likelihood named {cls.name!r} is already registered")
    LIKELIHOODS[cls.name] = cls
    return cls


def get(name: str) -> type[Likelihood]:
    if name not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {tuple(LIKELIHOODS)}, got {name!r}")
    return LIKELIHOODS[name]


def create(cfg) -> Likelihood:
    """The likelihood `cfg.likelihood` names, built for this config."""
    return get(cfg.likelihood)(cfg)
