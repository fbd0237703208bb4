"""The VAE model and the project's likelihood/metric math.

    from model import create_vae, decoder_nll, kl_diag_gaussian, to_model_range, to_uint8
    vae = create_vae("base", latent_dim=1024, likelihood="logistic_mixture", num_mixtures=10)
    out = vae(to_model_range(x_uint8))        # VAEOutput(mu, logvar, z, x_mean, x_logvar); .x_params = x_logvar
    nll = decoder_nll(vae.cfg, x_uint8, out.x_mean, out.x_params)   # NLLTerms(train [B], discretized [B])
    loss = (nll.train + beta * kl_diag_gaussian(out.mu, out.logvar)).mean()
    x_mean, x_params = vae.decode(z)          # every likelihood: x_mean is the mean image (to_uint8 -> figures, PSNR)

Decoder likelihoods (VAEConfig.likelihood, model.LIKELIHOODS):
    gaussian_fixed    x_params = 0-dim log-variance cfg.fixed_logvar
    gaussian_learned  x_params = [B,3,H,W] per-pixel log-variance, clamped to cfg.logvar_range
    gaussian_shared   sigma-VAE: x_params = 0-dim log-variance; in a training-mode forward it is the batch's
                      closed-form optimum log(MSE); elsewhere (decode, eval mode) the running average kept in
                      the buffer decoder.shared_logvar (saved in the state dict): one global sigma at eval
    gaussian_rgb      the same with one shared 3x3 covariance of (R, G, B): x_params = [3,3] (batch residual covariance
                      in training, buffer decoder.shared_cov elsewhere); NLL = rgb_conditionals' chain of 1-D Gaussians
    logistic_mixture  x_params = [B,10K,H,W] PixelCNN++ mixture parameters (K = cfg.num_mixtures, coupled
                      channel means); x_mean = the mixture mean with coupling applied
    categorical       x_params = [B,3*256,H,W] logits of a 256-way softmax per sub-pixel; x_mean = expected level
    bernoulli         x_params = [B,3,H,W] logits of P(white) per sub-pixel of the binarised image (observed(): x >= 128)
decoder_nll is the one entry point for trainer and eval: `train` is the loss to differentiate (continuous
Gaussian NLL; for the mixture the discretized NLL itself), `discretized` the evaluation NLL (>= 0, 256 bins,
open edge bins). The Gaussian-only tools (gaussian_nll, discretized_gaussian_nll, sigma fitting) stay valid
for the three log-variance Gaussian heads; gaussian_rgb reaches the first two through rgb_conditionals.

Presets: tiny, cpu (issue 13's CPU recipe: no full-resolution blocks, last_upsample="pixel_shuffle",
decoder_norm="none", gaussian_rgb, latent 256), base, large; any VAEConfig field overrides a preset's.
Layers live in model.layers, blocks in model.blocks, the networks and presets in model.vae.
"""

from .likelihood import (
    NUM_DIMS,
    HarmonicMetric,
    active_units,
    NLLTerms,
    bits_per_dim,
    decoder_nll,
    observed,
    decoder_std,
    discretized_gaussian_nll,
    discretized_gaussian_nll_per_pixel,
    gaussian_nll,
    harmonic_metric,
    kl_diag_gaussian,
    kl_diag_gaussian_per_dim,
    discretized_logistic_mixture_nll,
    logistic_mixture_mean,
    psnr_db,
    to_model_range,
    to_uint8,
)
from .likelihood import LIKELIHOODS
from .vae import MODELS, PRESETS, VAE, Decoder, Encoder, VAEConfig, VAEOutput, create_vae

__all__ = [
    "VAE",
    "VAEConfig",
    "VAEOutput",
    "Encoder",
    "Decoder",
    "PRESETS",
    "LIKELIHOODS",
    "MODELS",
    "create_vae",
    "NUM_DIMS",
    "HarmonicMetric",
    "active_units",
    "bits_per_dim",
    "decoder_nll",
    "observed",
    "decoder_std",
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
