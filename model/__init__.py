"""The VAE model, its decoder likelihoods and the project's metric math.

    from model import create_vae, kl_diag_gaussian, to_model_range, to_uint8
    vae = create_vae("base", latent_dim=1024, likelihood="logistic_mixture", num_mixtures=10)
    likelihood = vae.decoder.likelihood       # the decoder family's object (model.likelihoods)
    out = vae(to_model_range(x_uint8))        # VAEOutput(mu, logvar, z, x_mean, x_logvar); .x_params = x_logvar
    nll = likelihood.nll(x_uint8, out.x_mean, out.x_params)   # NLLTerms(train [B], discretized [B])
    loss = (nll.train + beta * kl_diag_gaussian(out.mu, out.logvar)).mean()
    x_mean, x_params = vae.decode(z)          # every likelihood: x_mean is the mean image (to_uint8 -> figures, PSNR)

Decoder likelihoods (VAEConfig.likelihood, a name in model.LIKELIHOODS): model.likelihoods, one class each;
the trainer and eval ask `vae.decoder.likelihood`, never the name. The Gaussian-only tools (gaussian_nll,
discretized_gaussian_nll, sigma fitting) stay valid for the log-variance Gaussian heads; gaussian_rgb reaches
the first two through rgb_conditionals.

Presets: tiny, cpu (the CPU recipe: no full-resolution blocks, last_upsample="pixel_shuffle",
decoder_norm="none", gaussian_rgb, latent 256), base, large; any VAEConfig field overrides a preset's.
Model kinds (VAEConfig.model: vae, ae, aae): model.kinds, one object each (`cfg.kind`): whether the latent is a
point, the modules the kind adds (the AAE's discriminator), its own eval numbers.
Layers live in model.layers, blocks in model.blocks, the networks and presets in model.vae.
"""

from .likelihoods import (
    LIKELIHOODS,
    Likelihood,
    NLLTerms,
    discretized_gaussian_nll,
    discretized_gaussian_nll_per_pixel,
    discretized_logistic_mixture_nll,
    gaussian_nll,
    logistic_mixture_mean,
)
from .metrics import (
    NUM_DIMS,
    HarmonicMetric,
    active_units,
    bits_per_dim,
    harmonic_metric,
    kl_diag_gaussian,
    kl_diag_gaussian_per_dim,
    psnr_db,
    to_model_range,
    to_uint8,
)
from .kinds import KINDS, ModelKind
from .vae import MODELS, PRESETS, VAE, Decoder, Encoder, EncoderDecoder, VAEConfig, VAEOutput, create_vae

__all__ = [
    "VAE",
    "VAEConfig",
    "VAEOutput",
    "Encoder",
    "Decoder",
    "EncoderDecoder",
    "KINDS",
    "ModelKind",
    "PRESETS",
    "LIKELIHOODS",
    "Likelihood",
    "MODELS",
    "create_vae",
    "NUM_DIMS",
    "HarmonicMetric",
    "active_units",
    "bits_per_dim",
    "NLLTerms",
    "discretized_gaussian_nll",
    "discretized_logistic_mixture_nll",
    "logistic_mixture_mean",
    "discretized_gaussian_nll_per_pixel",
    "gaussian_nll",
    "harmonic_metric",
    "kl_diag_gaussian",
    "kl_diag_gaussian_per_dim",
    "psnr_db",
    "to_model_range",
    "to_uint8",
]
