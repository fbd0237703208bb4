"""The Gaussian decoders: fixed sigma, learned per-pixel sigma, one shared sigma (sigma-VAE) and one shared RGB
covariance; their continuous NLL (the training loss) and discretized NLL (the evaluation NLL).

gaussian_nll is also the importance-weighted bound's density: log q(z|x) = -gaussian_nll(z, mu, logvar) and
log p(z) = -gaussian_nll(z, zeros, zeros).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from model.likelihoods.base import Likelihood, NLLTerms, register
from model.metrics import as_float32, sum_per_image, to_model_range

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar) -> torch.Tensor:
    """Continuous Gaussian NLL 1/2 sum [log 2 pi sigma^2 + (x - mean)^2 / sigma^2], [B], nats.

    x and mean are in model units (floats); logvar is per pixel or a scalar / 0-dim tensor (fixed
    sigma). This is a density, so it can be negative; it is the training loss. For a likelihood
    that is a probability use discretized_gaussian_nll.
    """
    x, mean = as_float32(x), as_float32(mean)
    logvar = as_float32(logvar).to(x.device)
    nll = 0.5 * (LOG_2PI + logvar + (x - mean).square() * torch.exp(-logvar))  # broadcasts a scalar logvar
    return sum_per_image(nll)


def _log_ndtr(x: torch.Tensor) -> torch.Tensor:
    """log Phi(x) whose gradient stays finite and accurate far into the left tail.

    torch.special.log_ndtr's value is fine there, but its backward, exp(-x^2/2 - log_ndtr(x)),
    cancels catastrophically in float32 (wrong by 6x at x = -1e4, inf/NaN further out). Below -20
    use the asymptotic series log Phi(x) = -x^2/2 - log(-x) - log(2 pi)/2 + log(1 - 1/x^2 + 3/x^4
    - 15/x^6), relative error < 1e-8 there. Both branches see clamped inputs so neither produces
    a NaN gradient through torch.where.
    """
    t = -20.0
    xt = x.clamp_max(t)
    inv2 = xt.square().reciprocal()
    tail = -0.5 * (xt.square() + LOG_2PI) - torch.log(-xt) + torch.log1p(-inv2 * (1 - 3 * inv2 * (1 - 5 * inv2)))
    return torch.where(x < t, tail, torch.special.log_ndtr(x.clamp_min(t)))


def _log_normal_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, elementwise, stable in both tails.

    Reflect to the left tail (Phi(b) - Phi(a) = Phi(-a) - Phi(-b)) when the interval's midpoint is
    positive, so we never subtract two numbers near 1; then
        log(Phi(hi) - Phi(lo)) = log Phi(hi) + log(1 - exp(log Phi(lo) - log Phi(hi))),
    with log Phi accurate far into the left tail and -expm1 accurate for tiny differences.
    For very narrow intervals (a bin much narrower than sigma) the difference of two float32
    logs loses its digits, so use the midpoint rule log phi(mid) + log(b - a) there: its
    relative error is about (mid^2 - 1) (b - a)^2 / 24, negligible below the switch point.
    """
    reflect = (a + b) > 0
    lo = torch.where(reflect, -b, a)
    hi = torch.where(reflect, -a, b)
    log_hi, log_lo = _log_ndtr(hi), _log_ndtr(lo)
    tiny = torch.finfo(a.dtype).tiny  # guard: the mass never rounds to 0 -> log never -inf / NaN grads
    stable = log_hi + torch.log((-torch.expm1(log_lo - log_hi)).clamp_min(tiny))
    width = b - a
    mid = 0.5 * (a + b)
    midpoint = -0.5 * (LOG_2PI + mid.square()) + torch.log(width.clamp_min(tiny))
    return torch.where(width < 1e-3, midpoint, stable)


def discretized_gaussian_nll_per_pixel(x_uint8: torch.Tensor, mean: torch.Tensor, logvar) -> torch.Tensor:
    """-log P(bin of x) under N(mean, exp(logvar)) in model space, same shape as x_uint8.

    Bin k is [(k - 0.5)/127.5 - 1, (k + 0.5)/127.5 - 1] = [(k - 128)/127.5, (k - 127)/127.5]; the
    edge bins are open, k=0 -> (-inf, ...] and k=255 -> [..., +inf), so the 256 masses sum to 1
    and the NLL is >= 0. Edges are computed as (integer)/127.5 so that the upper edge of bin k and
    the lower edge of bin k+1 are the same float: the masses telescope exactly even when sigma is
    a fraction of a grey level.
    """
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"discretized_gaussian_nll expects uint8 pixels, got {x_uint8.dtype}")
    mean = as_float32(mean)
    k = x_uint8.to(mean.device)
    kf = k.float()
    # sigma in [4e-18, 2e17] and |standardised edge| <= 1e18: x^2 stays finite in float32 below.
    inv_sigma = torch.exp(-0.5 * as_float32(logvar).to(mean.device).clamp(-80.0, 80.0))
    a = ((kf - 128.0) / 127.5 - mean).mul(inv_sigma).clamp(-1e18, 1e18)  # standardised lower edge
    b = ((kf - 127.0) / 127.5 - mean).mul(inv_sigma).clamp(-1e18, 1e18)  # standardised upper edge
    log_mass = torch.where(
        k == 0,
        _log_ndtr(b),  # (-inf, b]
        torch.where(k == 255, _log_ndtr(-a), _log_normal_mass(a, b)),  # [a, +inf) | [a, b]
    )
    return (-log_mass).clamp_min(0.0)  # mass <= 1 exactly; the clamp only removes float rounding


def discretized_gaussian_nll(x_uint8: torch.Tensor, mean: torch.Tensor, logvar) -> torch.Tensor:
    """Discretized Gaussian NLL summed per image: [B], nats, always >= 0 (the evaluation NLL)."""
    return sum_per_image(discretized_gaussian_nll_per_pixel(x_uint8, mean, logvar))


def rgb_cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Lower-triangular L [3, 3] with L L^T = cov, a 3x3 covariance, written out (no linalg call: the compiled
    training step keeps it in one graph)."""
    cov = as_float32(cov)
    l00 = cov[0, 0].sqrt()
    l10, l20 = cov[1, 0] / l00, cov[2, 0] / l00
    l11 = (cov[1, 1] - l10.square()).sqrt()
    l21 = (cov[2, 1] - l20 * l10) / l11
    l22 = (cov[2, 2] - l20.square() - l21.square()).sqrt()
    zero = torch.zeros_like(l00)
    return torch.stack([torch.stack([l00, zero, zero]), torch.stack([l10, l11, zero]), torch.stack([l20, l21, l22])])


def rgb_conditionals(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N(mean, cov) over each pixel's (R, G, B), cov one shared 3x3 matrix, as a chain of 1-D Gaussians:
    p(x_R) p(x_G | x_R) p(x_B | x_R, x_G). Returns their means [B, 3, H, W] given the observed x (model units)
    and their log-variances [1, 3, 1, 1].

    With cov = L L^T and x = mean + L e, the earlier channels' observed values fix e_R and e_G, so
    m_G = mean_G + L10 e_R and m_B = mean_B + L20 e_R + L21 e_G with standard deviations L00, L11, L22 (the
    coupling of PixelCNN++'s output layer, on residuals: the mean image stays `mean`)."""
    chol = rgb_cholesky(cov)
    x, mean = as_float32(x), as_float32(mean)
    residual_r, residual_g = (x - mean)[:, 0], (x - mean)[:, 1]
    e_r = residual_r / chol[0, 0]
    e_g = (residual_g - chol[1, 0] * e_r) / chol[1, 1]
    mean_r, mean_g, mean_b = mean.unbind(1)
    conditional = torch.stack([mean_r, mean_g + chol[1, 0] * e_r, mean_b + chol[2, 0] * e_r + chol[2, 1] * e_g], 1)
    return conditional, (2.0 * torch.diagonal(chol).log()).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- the decoder families


class LogVarianceGaussian(Likelihood):
    """A Gaussian per sub-pixel whose x_params is a log-variance: per pixel [B, C, H, W] or one 0-dim value."""

    def nll(self, x_uint8: torch.Tensor, x_mean: torch.Tensor, x_params: torch.Tensor) -> NLLTerms:
        x = to_model_range(x_uint8.to(x_mean.device))
        with torch.no_grad():  # only scored, never differentiated: the training step keeps no graph for it
            discretized = discretized_gaussian_nll(x_uint8, x_mean, x_params)
        return NLLTerms(gaussian_nll(x, x_mean, x_params), discretized)

    def std(self, x_params: torch.Tensor, batch_size: int) -> torch.Tensor:
        std = torch.exp(0.5 * as_float32(x_params))
        return std.flatten(1).mean(1) if std.ndim else std.expand(batch_size)


@register
class GaussianFixed(LogVarianceGaussian):
    """Isotropic Gaussian, sigma fixed at exp(cfg.fixed_logvar / 2), i.e. MSE: x_params is that 0-dim
    log-variance."""

    name = "gaussian_fixed"
    fits_global_sigma = True

    def head(self, out: torch.Tensor, decoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return out, torch.full((), self.cfg.fixed_logvar, device=out.device, dtype=out.dtype)


@register
class GaussianLearned(LogVarianceGaussian):
    """A learned log-variance per sub-pixel (a second head of C channels), clamped to cfg.logvar_range."""

    name = "gaussian_learned"

    @property
    def out_channels(self) -> int:
        return 2 * self.cfg.in_channels

    def head(self, out: torch.Tensor, decoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = out.chunk(2, dim=1)
        return mean, logvar.clamp(*self.cfg.logvar_range)


def running_weight(updates: torch.Tensor, decay: float) -> torch.Tensor:
    """The weight of update n = `updates` in a running average with decay min(decay, (1 + n) / (10 + n)): early
    batches, fitted to a barely trained decoder, leave the average quickly. A 0-dim tensor (no host sync)."""
    n = updates.float()
    return 1.0 - ((1.0 + n) / (10.0 + n)).clamp_max(decay)


def batch_residuals(x: torch.Tensor, x_mean: torch.Tensor) -> torch.Tensor:
    """x - x_mean in float32, detached: at the closed-form optimum d(loss)/d(sigma) = 0, so the gradient to the
    mean is the same whether or not it flows through the fitted sigma."""
    return x.detach().float() - x_mean.detach().float()


@register
class GaussianShared(LogVarianceGaussian):
    """One shared sigma (sigma-VAE, Rybkin et al. 2021): in a training-mode forward sigma^2 is the batch's
    closed-form optimum, the mean squared error over every sub-pixel; a running average of it (the buffer
    decoder.shared_logvar, saved with the weights) is the one global sigma that decode() and every evaluation
    use. x_params is the 0-dim log-variance."""

    name = "gaussian_shared"

    def running_stats(self) -> dict[str, torch.Tensor]:
        return {"shared_logvar": torch.tensor(float(self.cfg.fixed_logvar)),
                "shared_updates": torch.zeros((), dtype=torch.long)}

    def head(self, out: torch.Tensor, decoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return out, decoder.shared_logvar.clone()

    def batch_params(self, x: torch.Tensor, x_mean: torch.Tensor, x_params: torch.Tensor,
                     decoder: nn.Module) -> torch.Tensor:
        logvar = batch_residuals(x, x_mean).square().mean().log().clamp(*self.cfg.logvar_range)
        # the running average is one of sigma^2, kept as its log
        weight = running_weight(decoder.shared_updates, self.cfg.shared_sigma_decay)
        variance = torch.lerp(decoder.shared_logvar.exp(), logvar.exp(), weight)
        decoder.shared_logvar.copy_(variance.log().clamp(*self.cfg.logvar_range))
        decoder.shared_updates.add_(1)
        return logvar


@register
class GaussianRGB(Likelihood):
    """Trained exactly as gaussian_shared, but its distribution has one shared 3x3 covariance of each pixel's
    (R, G, B) instead of one sigma: the batch's residual covariance in training, a running average
    (decoder.shared_cov) elsewhere; a decoder's RGB errors are strongly correlated (brightness), which one sigma
    per sub-pixel pays for three times. x_params is the [3, 3] covariance; the mean image is the decoder output;
    the discretized NLL is rgb_conditionals' chain of 1-D Gaussians."""

    name = "gaussian_rgb"

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.in_channels != 3:
            raise ValueError(f"the RGB covariance needs 3 input channels, got {cfg.in_channels}")

    def running_stats(self) -> dict[str, torch.Tensor]:
        return {"shared_cov": torch.eye(3) * math.exp(self.cfg.fixed_logvar),
                "shared_updates": torch.zeros((), dtype=torch.long)}

    def head(self, out: torch.Tensor, decoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return out, decoder.shared_cov.clone()

    def batch_params(self, x: torch.Tensor, x_mean: torch.Tensor, x_params: torch.Tensor,
                     decoder: nn.Module) -> torch.Tensor:
        # The batch's mean outer product of RGB residuals, its diagonal floored at the log-variance clamp's low
        # end so the Cholesky factor stays finite; in float32 also under bf16 autocast (3 digits would be coarse
        # for a running average).
        residual = batch_residuals(x, x_mean).transpose(0, 1).flatten(1)
        floor = math.exp(self.cfg.logvar_range[0]) * torch.eye(3, device=residual.device)
        with torch.autocast(residual.device.type, enabled=False):
            cov = residual @ residual.T / residual.shape[1] + floor
        decoder.shared_cov.lerp_(cov, running_weight(decoder.shared_updates, self.cfg.shared_sigma_decay))
        decoder.shared_updates.add_(1)
        return cov

    def nll(self, x_uint8: torch.Tensor, x_mean: torch.Tensor, x_params: torch.Tensor) -> NLLTerms:
        # The mean trains on sigma-VAE's loss, one sigma^2 = the covariance's mean variance (the batch MSE in
        # training): the full covariance's NLL weighs colour errors ~10x above brightness errors and cost 1.8 dB of
        # PSNR at equal steps (BENCHMARKS.md). The covariance is the closed-form optimum for that mean, and the
        # evaluation NLL is the full one: each channel's bins given the earlier channels' observed values.
        x = to_model_range(x_uint8.to(x_mean.device))
        train = gaussian_nll(x, x_mean, torch.diagonal(as_float32(x_params)).mean().log())
        with torch.no_grad():
            discretized = discretized_gaussian_nll(x_uint8, *rgb_conditionals(x, x_mean, x_params))
        return NLLTerms(train, discretized)

    def std(self, x_params: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The shared covariance's per-channel sigmas, averaged."""
        return torch.diagonal(as_float32(x_params)).sqrt().mean().expand(batch_size)
