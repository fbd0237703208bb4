"""Decoder likelihoods: one class per family, one registry (`LIKELIHOODS`, name -> class).

    from model.likelihoods import create
    likelihood = create(cfg)                        # what Decoder does; the VAE's is vae.decoder.likelihood
    x_uint8 = likelihood.observed(batch_uint8)      # binarised for the Bernoulli, as they are otherwise
    nll = likelihood.nll(x_uint8, x_mean, x_params) # NLLTerms(train [B], discretized [B]), nats

    gaussian_fixed    x_params = 0-dim log-variance cfg.fixed_logvar
    gaussian_learned  x_params = [B,3,H,W] per-pixel log-variance, clamped to cfg.logvar_range
    gaussian_shared   sigma-VAE: x_params = 0-dim log-variance, the batch's closed-form optimum log(MSE) in a
                      training-mode forward, the running average (buffer decoder.shared_logvar) elsewhere
    gaussian_rgb      the same with one shared 3x3 covariance of (R, G, B): x_params = [3,3] (buffer
                      decoder.shared_cov); NLL = rgb_conditionals' chain of 1-D Gaussians
    logistic_mixture  x_params = [B,10K,H,W] PixelCNN++ mixture parameters (K = cfg.num_mixtures, coupled
                      channel means); x_mean = the mixture mean with coupling applied
    categorical       x_params = [B,3*256,H,W] logits of a 256-way softmax per sub-pixel; x_mean = expected level
    bernoulli         x_params = [B,3,H,W] logits of P(white) per sub-pixel of the binarised image (x >= 128)

`train` is the loss to differentiate (the continuous Gaussian NLL; for the discrete families the discretized NLL
itself), `discretized` the evaluation NLL (>= 0, 256 bins, open edge bins). Adding a family: a module with a
`@register`ed `Likelihood` subclass (see base.py), imported here.
"""
from model.likelihoods.base import LIKELIHOODS, Likelihood, NLLTerms, create, get, register
from model.likelihoods.gaussian import (GaussianFixed, GaussianLearned, GaussianRGB, GaussianShared,
                                        discretized_gaussian_nll, discretized_gaussian_nll_per_pixel, gaussian_nll,
                                        rgb_cholesky, rgb_conditionals)
from model.likelihoods.mixture import (LogisticMixture, discretized_logistic_mixture_nll,
                                       discretized_logistic_mixture_nll_per_pixel, logistic_mixture_mean,
                                       mixture_channels, split_mixture_params)
from model.likelihoods.categorical import LEVELS, Categorical, categorical_mean, categorical_nll
from model.likelihoods.bernoulli import Bernoulli, bernoulli_mean, bernoulli_nll, binarize

__all__ = [
    "LIKELIHOODS", "Likelihood", "NLLTerms", "create", "get", "register",
    "GaussianFixed", "GaussianLearned", "GaussianShared", "GaussianRGB", "LogisticMixture", "Categorical", "Bernoulli",
    "gaussian_nll", "discretized_gaussian_nll", "discretized_gaussian_nll_per_pixel", "rgb_cholesky",
    "rgb_conditionals", "discretized_logistic_mixture_nll", "discretized_logistic_mixture_nll_per_pixel",
    "logistic_mixture_mean", "mixture_channels", "split_mixture_params", "LEVELS", "categorical_mean",
    "categorical_nll", "bernoulli_mean", "bernoulli_nll", "binarize",
]
