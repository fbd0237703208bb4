"""The VAE model and the project's likelihood/metric math.

    from model import create_vae, discretized_gaussian_nll, kl_diag_gaussian
    vae = create_vae("base", latent_dim=1024)
    out = vae(to_model_range(x_uint8))                  # VAEOutput(mu, logvar, z, x_mean, x_logvar)
    loss = gaussian_nll(x, out.x_mean, out.x_logvar) + kl_diag_gaussian(out.mu, out.logvar)

Layers live in model.layers, blocks in model.blocks, the networks and presets in model.vae.
"""

from .likelihood import (
    NUM_DIMS,
    HarmonicMetric,
    active_units,
    bits_per_dim,
    discretized_gaussian_nll,
    discretized_gaussian_nll_per_pixel,
    gaussian_nll,
    harmonic_metric,
    kl_diag_gaussian,
    kl_diag_gaussian_per_dim,
    psnr_db,
    to_model_range,
    to_uint8,
)
from .vae import LIKELIHOODS, PRESETS, VAE, Decoder, Encoder, VAEConfig, VAEOutput, create_vae

__all__ = [
    "VAE",
    "VAEConfig",
    "VAEOutput",
    "Encoder",
    "Decoder",
    "PRESETS",
    "LIKELIHOODS",
    "create_vae",
    "NUM_DIMS",
    "HarmonicMetric",
    "active_units",
    "bits_per_dim",
    "discretized_gaussian_nll",
    "discretized_gaussian_nll_per_pixel",
    "gaussian_nll",
    "harmonic_metric",
    "kl_diag_gaussian",
    "kl_diag_gaussian_per_dim",
    "psnr_db",
    "to_model_range",
    "to_uint8",
]
