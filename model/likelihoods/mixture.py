"""The discretized logistic mixture with coupled channel means (PixelCNN++'s output layer)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from model.likelihoods.base import DiscreteLikelihood, register
from model.metrics import as_float32, sum_per_image

# PixelCNN++'s output layer (Salimans et al. 2017, `discretized_mix_logistic_loss`; NVAE/VDVAE use it): per
# pixel a mixture of K components; component k is a product of three logistics whose locations are coupled
# autoregressively across the channels of the *observed* pixel:
#     m_R = mu_R,k;   m_G = mu_G,k + c_0,k x_R;   m_B = mu_B,k + c_1,k x_R + c_2,k x_G,
# so log p(x_R, x_G, x_B) = logsumexp_k [log pi_k + sum_c log P_k(bin of x_c | earlier channels)].
# Parameter layout (NCHW, 10K channels, this project's order): [logits K | means 3K | log_scales 3K | coeffs 3K],
# the 3K blocks channel-major (R's K, then G's K, then B's K).

MIXTURE_LOG_SCALE_RANGE = (-7.0, 7.0)  # PixelCNN++ clamps at -7 (s = 0.0009, a tenth of a grey level)


def mixture_channels(num_mixtures: int, channels: int = 3) -> int:
    """Number of decoder output channels for a K-component mixture over `channels` (=3) coupled channels."""
    if channels != 3:
        raise ValueError("the coupled logistic mixture is defined for RGB (3 channels)")
    return 10 * num_mixtures


class MixtureParams(NamedTuple):
    logit_probs: torch.Tensor  # [B, K, H, W]
    means: torch.Tensor  # [B, 3, K, H, W] locations before coupling
    log_scales: torch.Tensor  # [B, 3, K, H, W] clamped to MIXTURE_LOG_SCALE_RANGE
    coeffs: torch.Tensor  # [B, 3, K, H, W] tanh-squashed: (c_0 G<-R, c_1 B<-R, c_2 B<-G)


def split_mixture_params(params: torch.Tensor) -> MixtureParams:
    """[B, 10K, H, W] decoder output -> MixtureParams, in float32."""
    params = as_float32(params)
    b, c, h, w = params.shape
    if c % 10 != 0:
        raise ValueError(f"logistic mixture parameters need 10K channels, got {c}")
    k = c // 10
    # split/unbind rather than indexing: their backward is one cat/stack, not a zero-filled tensor per slice
    logits, rest = params.split([k, 9 * k], dim=1)
    means, log_scales, coeffs = rest.reshape(b, 3, 3, k, h, w).unbind(1)  # each [B, channel, K, H, W]
    return MixtureParams(logits, means, log_scales.clamp(*MIXTURE_LOG_SCALE_RANGE), torch.tanh(coeffs))


def discretized_logistic_mixture_nll_per_pixel(x_uint8: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """-log P(x_R, x_G, x_B) per pixel under the coupled mixture, [B, H, W], nats, >= 0.

    Bins as in discretized_gaussian_nll_per_pixel: bin k = [(k-128)/127.5, (k-127)/127.5] in model units,
    edge bins open (k=0 -> (-inf, ...], k=255 -> [..., +inf)), so for every component and every conditioning
    value the 256 masses of each channel sum to 1 and the joint masses over 256^3 RGB triples sum to 1.
    """
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"discretized_logistic_mixture_nll expects uint8 pixels, got {x_uint8.dtype}")
    p = split_mixture_params(params)
    k = x_uint8.to(params.device).unsqueeze(2)  # [B, 3, 1, H, W]
    kf = k.float()
    x = kf / 127.5 - 1.0  # the observed values the later channels are conditioned on
    r, g, _ = x.unbind(1)
    m_r, m_g, m_b = p.means.unbind(1)
    c_gr, c_br, c_bg = p.coeffs.unbind(1)
    coupled = torch.stack([m_r, m_g + c_gr * r, m_b + c_br * r + c_bg * g], dim=1)  # [B, 3, K, H, W]
    inv_s = torch.exp(-p.log_scales)
    # standardised bin edges; the clamp keeps them finite for any decoder output (|mean| up to 1e15)
    a = (((kf - 128.0) / 127.5 - coupled) * inv_s).clamp(-1e18, 1e18)
    b = (((kf - 127.0) / 127.5 - coupled) * inv_s).clamp(-1e18, 1e18)
    width = inv_s / 127.5  # b - a, exactly
    # Bin 0 is (-inf, b]: log sigmoid(b). Bin 255 is [a, +inf): log sigmoid(-a). An interior bin [a, b] has
    # sigmoid(b) - sigmoid(a) = sigmoid(b) sigmoid(-a) (1 - exp(-(b - a))), so its log is the sum of both plus
    # log(-expm1(-width)): no difference of two numbers near 1 in either tail, and expm1 keeps its digits for bins
    # much narrower than the scale. The width is not b - a recomputed: far out in a tail a and b round to the
    # same float32 while their difference does not. All three terms are finite, so the edge cases are selected
    # by 0/1 masks (cheaper backward than torch.where's zero-filled branches).
    not_low, not_high = (k != 0).float(), (k != 255).float()
    log_mass = (F.logsigmoid(b) * not_high + F.logsigmoid(-a) * not_low
                + torch.log(-torch.expm1(-width)) * (not_low * not_high))
    log_joint = log_mass.sum(dim=1) + torch.log_softmax(p.logit_probs, dim=1)  # [B, K, H, W]
    return (-torch.logsumexp(log_joint, dim=1)).clamp_min(0.0)  # the clamp only removes float rounding


def discretized_logistic_mixture_nll(x_uint8: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Discretized coupled logistic mixture NLL summed per image: [B], nats, >= 0 (training and evaluation NLL)."""
    return sum_per_image(discretized_logistic_mixture_nll_per_pixel(x_uint8, params))


def logistic_mixture_mean(params: torch.Tensor) -> torch.Tensor:
    """The mixture's mean image [B, 3, H, W] in model units, channel coupling applied (by linearity).

    Within component k, E[x_R] = mu_R, E[x_G] = mu_G + c_0 mu_R, E[x_B] = mu_B + c_1 mu_R + c_2 E[x_G]; the
    image is the pi-weighted sum over components. This is the mean of the continuous mixture (a logistic's
    mean is its location); the open edge bins and rounding are applied by to_uint8. It is the MSE-optimal
    point estimate, so it is what PSNR, reconstructions, samples and edits use.
    """
    p = split_mixture_params(params)
    m, c = p.means, p.coeffs
    r = m[:, 0]
    g = m[:, 1] + c[:, 0] * r
    b = m[:, 2] + c[:, 1] * r + c[:, 2] * g
    pi = torch.softmax(p.logit_probs, dim=1)
    return (torch.stack([r, g, b], dim=1) * pi.unsqueeze(1)).sum(dim=2)


@register
class LogisticMixture(DiscreteLikelihood):
    """A discretized mixture of cfg.num_mixtures logistics per pixel with coupled channel means: x_params is the
    [B, 10K, H, W] parameter tensor, x_mean its mean image (coupling applied). Its training loss is the
    discretized NLL itself (a probability)."""

    name = "logistic_mixture"

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.num_mixtures < 1:
            raise ValueError(f"num_mixtures must be >= 1, got {cfg.num_mixtures}")

    @property
    def out_channels(self) -> int:
        return mixture_channels(self.cfg.num_mixtures, self.cfg.in_channels)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return logistic_mixture_mean(params)

    def exact_nll(self, x_uint8: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return discretized_logistic_mixture_nll(x_uint8, params)

    def std(self, x_params: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The components' spread sum_k pi_k s_k pi / sqrt(3) (coupling and the spread between component means
        left out)."""
        mixture = split_mixture_params(x_params)
        weights = torch.softmax(mixture.logit_probs, dim=1).unsqueeze(1)  # [B, 1, K, H, W]
        spread = (weights * mixture.log_scales.exp()).sum(2) * (math.pi / math.sqrt(3.0))
        return sum_per_image(spread) / spread[0].numel()
