"""Model kinds: what the encoder's output means and what a kind adds to the encoder-decoder pair.

    vae  the variational autoencoder: the encoder gives q(z|x) = N(mu, diag(exp(logvar))); KL, ELBO and the
         harmonic metric apply
    ae   the deterministic autoencoder: a point latent z = mu, reconstruction only (no KL, ELBO or harmonic
         metric, and prior samples mean nothing)
    aae  the adversarial autoencoder (Makhzani et al. 2016): a point latent whose aggregate distribution a
         discriminator on z pulls toward N(0, I)

`VAEConfig.model` names one; `VAEConfig.kind` is its object. The VAE adds the kind's `extra_modules` beside its
encoder and decoder, and eval reports the kind's `diagnostics`. What a kind trains beyond the reconstruction step
(the AAE's adversarial phases) is registered in the train stage under the same name (`train.phases`). Adding a
kind: a `ModelKind` subclass here, `register`ed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

from loaders.shards import first_images


class KindConfig(Protocol):
    """The fields of model.vae.VAEConfig a kind reads (that module imports this one)."""

    latent_dim: int
    discriminator_width: int


class ModelKind:
    name: str = ""
    point_latent: bool = False  # z = mu: the encoder gives no posterior variance

    def latent_outputs(self, latent_dim: int) -> int:
        """Outputs of the encoder's last Linear: mu alone, or mu and logvar."""
        return latent_dim if self.point_latent else 2 * latent_dim

    def extra_modules(self, cfg: KindConfig) -> dict[str, nn.Module]:
        """Modules the kind adds to the model (saved with it), by attribute name."""
        return {}

    def diagnostics(self, vae: nn.Module, split_dir: Path, count: int, seed: int) -> dict[str, float]:
        """Numbers only this kind has, measured on the first `count` images of a split (eval's report)."""
        return {}


KINDS: dict[str, ModelKind] = {}


def register(kind: type[ModelKind]) -> type[ModelKind]:
    KINDS[kind.name] = kind()
    return kind


def get(name: str) -> ModelKind:
    if name not in KINDS:
        raise ValueError(f"model must be one of {tuple(KINDS)}, got {name!r}")
    return KINDS[name]


@register
class VariationalAutoencoder(ModelKind):
    name = "vae"


@register
class Autoencoder(ModelKind):
    name = "ae"
    point_latent = True


class LatentDiscriminator(nn.Module):
    """The adversarial autoencoder's critic: z [B, d] -> the logit that z was drawn from the prior N(0, I)."""

    def __init__(self, latent_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.float()).squeeze(1)


@register
class AdversarialAutoencoder(ModelKind):
    name = "aae"
    point_latent = True

    def extra_modules(self, cfg: KindConfig) -> dict[str, nn.Module]:
        return {"discriminator": LatentDiscriminator(cfg.latent_dim, cfg.discriminator_width)}

    @torch.no_grad()
    def diagnostics(self, vae: nn.Module, split_dir: Path, count: int, seed: int) -> dict[str, float]:
        """The discriminator's accuracy: the share of prior draws it calls real and of the images' codes it calls
        fake (0.5: the codes are as prior-like as the discriminator can tell)."""
        mu = vae.encode_means(first_images(split_dir, count))
        prior = torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed))
        real, fake = vae.discriminator(prior.to(mu.device)), vae.discriminator(mu)
        return {"discriminator_accuracy": float(((real > 0).float().mean() + (fake < 0).float().mean()) / 2)}
