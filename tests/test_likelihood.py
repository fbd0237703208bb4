"""Likelihood / KL / metric math against independent computations (torch.distributions, mpmath, by hand)."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from model.likelihoods import create, discretized_gaussian_nll, discretized_gaussian_nll_per_pixel, gaussian_nll
from model.metrics import (
    NUM_DIMS,
    active_units,
    bits_per_dim,
    harmonic_metric,
    kl_diag_gaussian,
    kl_diag_gaussian_per_dim,
    to_model_range,
    to_uint8,
)
from model.vae import VAEConfig

ALL_BINS = torch.arange(256, dtype=torch.uint8)


def _likelihood(name: str):
    """The decoder family `name`, built for a default config."""
    return create(VAEConfig(likelihood=name))



# ----------------------------------------------------------------------------- data convention


def test_model_range_roundtrip():
    x = to_model_range(ALL_BINS)
    assert x.dtype == torch.float32
    assert x[0] == -1.0 and x[255] == 1.0
    torch.testing.assert_close(x[1] - x[0], torch.tensor(2 / 255))
    assert torch.equal(to_uint8(x), ALL_BINS)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


# ----------------------------------------------------------------------------- KL


def test_kl_matches_torch_distributions_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g)
    logvar = torch.randn(3, 4, generator=g)
    kl = kl_diag_gaussian(mu, logvar)
    assert kl.shape == (3,)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl, kl_divergence(q, p).sum(1))
    # Monte Carlo: KL = E_q[log q(z) - log p(z)]
    z = q.sample((200_000,))
    terms = (q.log_prob(z) - p.log_prob(z)).sum(-1)  # [N, 3]
    est, stderr = terms.mean(0), terms.std(0) / math.sqrt(terms.shape[0])
    assert ((est - kl).abs() < 5 * stderr + 1e-3).all(), (est, kl, stderr)


def test_kl_per_dim():
    mu, logvar = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, math.log(4.0)]])
    per = kl_diag_gaussian_per_dim(mu, logvar)
    # by hand: 0; 1/2 * 1; 1/2 (4 - 1 - ln 4)
    torch.testing.assert_close(per, torch.tensor([[0.0, 0.5, 0.5 * (3 - math.log(4.0))]]))
    torch.testing.assert_close(kl_diag_gaussian(mu, logvar), per.sum(1))


# ----------------------------------------------------------------------------- continuous NLL


def test_gaussian_nll_matches_normal_log_prob():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    mean = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    logvar = torch.rand(2, 3, 8, 8, generator=g) * 6 - 7
    ref = -Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(gaussian_nll(x, mean, logvar), ref)
    # scalar log-variance (fixed-sigma head): python float and 0-dim tensor
    ref = -Normal(mean, math.exp(0.5 * -4.6)).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(gaussian_nll(x, mean, -4.6), ref)
    torch.testing.assert_close(gaussian_nll(x, mean, torch.tensor(-4.6)), ref)


# ----------------------------------------------------------------------------- discretized NLL


def _mp_nll(k: int, mean: float, logvar: float) -> float:
    """-log P(bin k) with 50-digit mpmath, edge bins open; reflected so no 1 - 1 cancellation."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    s = mpmath.exp(mpmath.mpf(logvar) / 2)
    x = mpmath.mpf(k) / mpmath.mpf("127.5") - 1
    h = mpmath.mpf(1) / 255
    lo, hi = (x - h - mpmath.mpf(mean)) / s, (x + h - mpmath.mpf(mean)) / s
    if k == 0:
        mass = mpmath.ncdf(hi)
    elif k == 255:
        mass = mpmath.ncdf(-lo)
    elif lo + hi <= 0:
        mass = mpmath.ncdf(hi) - mpmath.ncdf(lo)
    else:
        mass = mpmath.ncdf(-lo) - mpmath.ncdf(-hi)
    return float(-mpmath.log(mass))


CASES = [  # (mean, logvar): centre, edges, outside [-1, 1], far tails, clamp ends and beyond
    (0.0, -10.0),
    (0.3, -10.0),
    (-0.999, -12.0),
    (0.999, -7.0),
    (-1.5, -2.0),
    (1.2, -8.0),
    (5.0, -10.0),
    (-30.0, 0.0),
    (0.0, 1.0),
    (0.1, 20.0),
]


@pytest.mark.parametrize("mean,logvar", CASES)
def test_discretized_nll_matches_high_precision_reference(mean, logvar):
    mean32 = float(torch.tensor(mean))  # compare at the float32 mean the function actually sees
    # every bin (0 and 255 included) for one (mean, sigma)
    nll = discretized_gaussian_nll_per_pixel(ALL_BINS, torch.full((256,), mean32), torch.full((256,), logvar))
    ref = torch.tensor([_mp_nll(k, mean32, logvar) for k in range(256)], dtype=torch.float64)
    assert torch.isfinite(nll).all()
    rel = (nll.double() - ref).abs() / ref.clamp_min(1.0)
    assert rel.max() < 1e-4, (rel.max(), rel.argmax())


def test_discretized_nll_matches_float64_cdf_for_random_pixels():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0, 255  # always include the open edge bins
    mean = torch.rand(x.shape, generator=g) * 2.4 - 1.2
    logvar = torch.rand(x.shape, generator=g) * 4 - 4  # sigma >= 0.135: |z| <= 17, far tails included
    # float64 reference: CDF differences with Phi(z) = erfc(-z/sqrt 2)/2 (accurate in the left tail,
    # unlike 1 + erf), using the mirrored bin on the right so that 1 - 1 never happens
    mean.requires_grad_(True)
    mu, sigma = mean.double().detach().requires_grad_(True), torch.exp(0.5 * logvar.double())
    inf = torch.tensor(math.inf, dtype=torch.float64)
    lo_edge = torch.where(x == 0, -inf, (x.double() - 0.5) / 127.5 - 1)  # open edge bins
    hi_edge = torch.where(x == 255, inf, (x.double() + 0.5) / 127.5 - 1)
    cdf = lambda e: 0.5 * torch.special.erfc(-(e - mu) / sigma / math.sqrt(2))
    left = cdf(hi_edge) - cdf(lo_edge)
    right = cdf(2 * mu - lo_edge) - cdf(2 * mu - hi_edge)  # P(lo < X < hi) = P(2mu - hi < X < 2mu - lo)
    right_side = lo_edge + hi_edge > 2 * mu
    ref = -torch.log(torch.where(right_side, right, left)).sum((1, 2, 3))
    got = discretized_gaussian_nll(x, mean, logvar)
    assert got.shape == (4,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-3)
    # gradients w.r.t. the decoder mean agree too (float64 autograd through erfc)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(mean.grad.double(), mu.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mean", [-3.0, -1.0, -0.5, 0.0, 0.37, 1.0, 1.5, 40.0])
@pytest.mark.parametrize("logvar", [-14.0, -10.0, -4.6, 0.0, 1.0, 25.0])
def test_discretized_masses_sum_to_one(mean, logvar):
    nll = discretized_gaussian_nll_per_pixel(ALL_BINS, torch.full((256,), mean), torch.tensor(logvar))
    assert (nll >= 0).all() and torch.isfinite(nll).all()
    assert abs(torch.exp(-nll.double()).sum().item() - 1.0) < 1e-5


def test_discretized_nll_nonnegative_finite_with_finite_grads_at_extremes():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    mean = (torch.randn(x.shape, generator=g) * 20).requires_grad_(True)  # far tails on both sides
    logvar = (torch.rand(x.shape, generator=g) * 40 - 20).requires_grad_(True)  # sigma 5e-5 .. 2e4
    nll = discretized_gaussian_nll(x, mean, logvar)
    assert (nll >= 0).all() and torch.isfinite(nll).all()
    nll.sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(logvar.grad).all()


def test_discretized_approaches_continuous_for_wide_sigma():
    # bin mass ~ density * bin width when sigma >> 2/255: disc ~ cont - D log(2/255) for interior pixels
    g = torch.Generator().manual_seed(4)
    x = torch.randint(1, 255, (2, 3, 8, 8), generator=g, dtype=torch.uint8)
    mean, logvar = torch.zeros(x.shape), torch.full(x.shape, 2 * math.log(0.3))
    disc = discretized_gaussian_nll(x, mean, logvar)
    cont = gaussian_nll(to_model_range(x), mean, logvar) - x[0].numel() * math.log(2 / 255)
    torch.testing.assert_close(disc, cont, rtol=1e-4, atol=1e-3)


def test_likelihood_math_stays_float32_under_bf16_autocast():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, logvar = torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16), torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16)
    mu, lv = torch.zeros(2, 8, dtype=torch.bfloat16), torch.zeros(2, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert discretized_gaussian_nll(x, mean, logvar).dtype == torch.float32
        assert gaussian_nll(to_model_range(x), mean, logvar).dtype == torch.float32
        assert kl_diag_gaussian(mu, lv).dtype == torch.float32


def test_discretized_nll_requires_uint8():
    with pytest.raises(TypeError, match="uint8"):
        discretized_gaussian_nll(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(()))


# ----------------------------------------------------------------------------- metrics


def test_bits_per_dim():
    assert NUM_DIMS == 12288
    assert bits_per_dim(12288 * math.log(2)) == pytest.approx(1.0)
    assert bits_per_dim(10 * math.log(2), num_dims=5) == pytest.approx(2.0)
    torch.testing.assert_close(bits_per_dim(torch.tensor([0.0, 12288 * math.log(2)])), torch.tensor([0.0, 1.0]))


def test_harmonic_metric_hand_values():
    # n = 2 bits/sub-pixel, k = 0.5 bits/component -> H = 2*2*0.5 / 2.5 = 0.8
    nll = 2 * 12288 * math.log(2)
    kl = 0.5 * 128 * math.log(2)
    m = harmonic_metric(nll, kl, latent_dim=128)
    assert m.n == pytest.approx(2.0) and m.k == pytest.approx(0.5) and m.h == pytest.approx(0.8)
    # tensors in, floats out; H = 0 when n + k = 0; H -> 0 as k -> 0 (the collapse caveat)
    m = harmonic_metric(torch.tensor(nll), torch.tensor(kl), latent_dim=128)
    assert isinstance(m.h, float) and m.h == pytest.approx(0.8)
    assert harmonic_metric(0.0, 0.0, latent_dim=64).h == 0.0
    assert harmonic_metric(nll, 0.0, latent_dim=64).h == 0.0
    assert harmonic_metric(3.0, 6.0, latent_dim=2, num_dims=1).h == pytest.approx(
        2 * (3 / math.log(2)) * (3 / math.log(2)) / (6 / math.log(2))
    )


def test_active_units():
    assert active_units(torch.tensor([0.5, 0.001, 0.02, 0.01])) == 2  # strictly greater than 0.01
    assert active_units(torch.tensor([0.5, 0.001, 0.02]), threshold=0.6) == 0


# ----------------------------------------------------------------------------- discretized logistic mixture

import numpy as np  # noqa: E402

from model.likelihoods import (  # noqa: E402
    LIKELIHOODS,
    get,
    discretized_logistic_mixture_nll,
    discretized_logistic_mixture_nll_per_pixel,
    logistic_mixture_mean,
    split_mixture_params,
)


def _mixture_params(k: int, h: int = 1, w: int = 1, b: int = 1, seed: int = 0, scale_shift: float = -2.5):
    """Random raw parameters [b, 10k, h, w] in this project's layout (logits | means | log_scales | coeffs)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g)
    means = 0.6 * torch.randn(b, 3 * k, h, w, generator=g)
    log_scales = scale_shift + 0.7 * torch.randn(b, 3 * k, h, w, generator=g)
    coeffs = torch.randn(b, 3 * k, h, w, generator=g)
    return torch.cat([logits, means, log_scales, coeffs], dim=1)


def _reference_mixture_log_prob(x: np.ndarray, raw: np.ndarray, mpmath) -> float:
    """Independent reference for one pixel: x [3] uint8, raw [10K] (this project's layout), in 40-digit mpmath.

    Written from the PixelCNN++ definition with plain sigmoid differences (no log-space tricks: the precision
    makes them unnecessary down to masses of 1e-35) and explicit loops over components and channels.
    """
    mp = mpmath.mp
    k = raw.shape[0] // 10
    logits, rest = raw[:k], raw[k:].reshape(3, 3, k)
    means, log_scales, coeffs = rest[0], np.clip(rest[1], -7.0, 7.0), rest[2]
    xv = [mp.mpf(int(v)) / mp.mpf("127.5") - 1 for v in x]
    sig = lambda t: 1 / (1 + mp.exp(-t))  # noqa: E731
    weights = [mp.exp(mp.mpf(float(v))) for v in logits]
    total = mp.mpf(0)
    for j in range(k):
        c = [mp.tanh(mp.mpf(float(v))) for v in coeffs[:, j]]
        m = [mp.mpf(float(v)) for v in means[:, j]]
        locs = [m[0], m[1] + c[0] * xv[0], m[2] + c[1] * xv[0] + c[2] * xv[1]]
        prob = weights[j] / sum(weights)
        for ch in range(3):
            s = mp.exp(mp.mpf(float(log_scales[ch, j])))
            upper = 1 if x[ch] == 255 else sig((mp.mpf(int(x[ch]) - 127) / mp.mpf("127.5") - locs[ch]) / s)
            lower = 0 if x[ch] == 0 else sig((mp.mpf(int(x[ch]) - 128) / mp.mpf("127.5") - locs[ch]) / s)
            prob *= upper - lower
        total += prob
    return float(mp.log(total))


def test_mixture_matches_independent_mpmath_reference():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    k, n = 4, 64
    raw = _mixture_params(k, h=n, w=1, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (1, 3, n, 1), generator=g, dtype=torch.uint8)
    x[0, :, :6, 0] = torch.tensor([[0, 0, 0], [255, 255, 255], [0, 255, 0], [255, 0, 128], [1, 254, 127], [128, 128, 128]]).T
    nll = discretized_logistic_mixture_nll_per_pixel(x, raw)  # [1, n, 1]
    assert nll.shape == (1, n, 1)
    ref = [-_reference_mixture_log_prob(x[0, :, i, 0].numpy(), raw[0, :, i, 0].double().numpy(), mpmath)
           for i in range(n)]
    torch.testing.assert_close(nll[0, :, 0].double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(discretized_logistic_mixture_nll(x, raw), nll.sum().reshape(1))


@pytest.mark.slow
def test_mixture_masses_sum_to_one_over_all_rgb_triples():
    """Enumerate all 256^3 RGB values of one pixel for a 3-component mixture: the joint masses sum to 1."""
    k = 3
    raw = _mixture_params(k, seed=3, scale_shift=-3.0)  # [1, 30, 1, 1]
    gb = torch.stack(torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij"))  # [2, 256, 256]
    params = raw.expand(1, 10 * k, 256, 256)
    total = torch.zeros((), dtype=torch.float64)
    for r in range(256):
        x = torch.cat([torch.full((1, 256, 256), r), gb]).unsqueeze(0).to(torch.uint8)
        total += torch.exp(-discretized_logistic_mixture_nll_per_pixel(x, params).double()).sum()
    assert abs(total.item() - 1.0) < 1e-4, total


def test_mixture_per_channel_masses_sum_to_one_for_narrow_and_wide_scales():
    """For every conditioning value, each channel's 256 bins sum to 1, even for scales far below a grey level."""
    for log_scale, mean in [(-7.0, 0.3), (-7.0, 5.0), (0.0, -0.2), (5.0, 0.0), (-5.5, -1.0)]:
        raw = torch.zeros(1, 10, 256, 1)
        raw[:, 1:4] = mean  # K = 1: means for R, G, B
        raw[:, 4:7] = log_scale
        raw[:, 7:10] = 0.0  # no coupling: the channels are independent
        x = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, 3, 256, 1).contiguous()
        # with identical, uncoupled channels p(x,x,x) = p1(x)^3, so sum_x p(x,x,x)^(1/3) = sum_x p1(x) = 1
        p1 = torch.exp(-discretized_logistic_mixture_nll_per_pixel(x, raw).double() / 3)
        assert abs(p1.sum().item() - 1.0) < 1e-5, (log_scale, mean, p1.sum())


def test_mixture_extreme_tail_against_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    for x_val, mean, log_scale in [(100, 0.9, -7.0), (3, -0.5, -6.0), (0, 3.0, -7.0), (255, -3.0, -7.0), (200, 0.55, -7.0)]:
        raw = torch.zeros(1, 10, 1, 1)
        raw[:, 1:4], raw[:, 4:7] = mean, log_scale
        x = torch.full((1, 3, 1, 1), x_val, dtype=torch.uint8)
        s = mpmath.e ** mpmath.mpf(log_scale)
        sig = lambda t: 1 / (1 + mpmath.e ** (-t))  # noqa: E731
        lo = mpmath.mpf(x_val - 128) / mpmath.mpf("127.5")
        hi = mpmath.mpf(x_val - 127) / mpmath.mpf("127.5")
        # 1 - sig(t) = sig(-t): write each mass as a difference of two small numbers (no 1 - 1 at 50 digits)
        if x_val == 255:
            mass = sig(-(lo - mean) / s)
        elif x_val == 0:
            mass = sig((hi - mean) / s)
        elif lo + hi > 2 * mean:
            mass = sig(-(lo - mean) / s) - sig(-(hi - mean) / s)
        else:
            mass = sig((hi - mean) / s) - sig((lo - mean) / s)
        expected = float(-3 * mpmath.log(mass))
        got = discretized_logistic_mixture_nll_per_pixel(x, raw).item()
        assert math.isfinite(got)
        assert got == pytest.approx(expected, rel=1e-5), (x_val, mean, log_scale, got, expected)


def test_mixture_gradients_finite_at_extremes():
    k = 2
    values = [0, 1, 127, 254, 255]
    n = len(values) ** 3
    x = torch.tensor([[r, g, b] for r in values for g in values for b in values], dtype=torch.uint8).T.reshape(1, 3, n, 1)
    for mean, log_scale, logit in [(0.0, -50.0, 0.0), (1e4, -7.0, 80.0), (-1e4, -7.0, -80.0), (0.0, 50.0, 0.0),
                                   (1.0, -7.0, 0.0), (-1.0, -7.0, 0.0), (1e6, 50.0, 0.0),
                                   (1e15, -7.0, 0.0), (-1e15, 50.0, 0.0)]:
        raw = torch.zeros(1, 10 * k, n, 1)
        raw[:, :k] = torch.tensor([logit, -logit]).view(1, k, 1, 1)
        raw[:, k:4 * k] = mean
        raw[:, 4 * k:7 * k] = log_scale
        raw[:, 7 * k:] = torch.tensor([-30.0, 0.5] * 3).view(1, 3 * k, 1, 1)
        raw.requires_grad_(True)
        nll = discretized_logistic_mixture_nll(x, raw)
        assert torch.isfinite(nll).all() and (nll >= 0).all()
        nll.sum().backward()
        assert torch.isfinite(raw.grad).all(), (mean, log_scale, logit)


def test_mixture_mean_matches_monte_carlo_with_coupling():
    k = 3
    raw = _mixture_params(k, seed=4, scale_shift=-3.0)
    p = split_mixture_params(raw)
    g = torch.Generator().manual_seed(5)
    n = 400_000
    comp = torch.multinomial(torch.softmax(p.logit_probs[0, :, 0, 0], 0), n, replacement=True, generator=g)
    u = torch.rand(3, n, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    noise = torch.log(u) - torch.log1p(-u)  # standard logistic
    loc, s, c = p.means[0, :, :, 0, 0].double(), p.log_scales[0, :, :, 0, 0].double().exp(), p.coeffs[0, :, :, 0, 0].double()
    r = loc[0, comp] + s[0, comp] * noise[0]
    gg = loc[1, comp] + c[0, comp] * r + s[1, comp] * noise[1]
    b = loc[2, comp] + c[1, comp] * r + c[2, comp] * gg + s[2, comp] * noise[2]
    mc = torch.stack([r.mean(), gg.mean(), b.mean()])
    mean = logistic_mixture_mean(raw)[0, :, 0, 0].double()
    assert (mean - mc).abs().max() < 3e-3, (mean, mc)


def test_decoder_nll_gaussians_unchanged_and_mixture_is_discretized():
    g = torch.Generator().manual_seed(6)
    x8 = torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=torch.uint8)
    mean = torch.randn(2, 3, 8, 8, generator=g) * 0.5
    logvar = torch.randn(2, 3, 8, 8, generator=g) - 4
    for name, lv in [("gaussian_learned", logvar), ("gaussian_fixed", torch.tensor(-4.6)), ("gaussian_shared", torch.tensor(-5.0))]:
        terms = _likelihood(name).nll(x8, mean, lv)
        torch.testing.assert_close(terms.train, gaussian_nll(to_model_range(x8), mean, lv))
        torch.testing.assert_close(terms.discretized, discretized_gaussian_nll(x8, mean, lv))
    raw = _mixture_params(5, 8, 8, b=2)
    terms = _likelihood("logistic_mixture").nll(x8, logistic_mixture_mean(raw), raw)
    torch.testing.assert_close(terms.train, discretized_logistic_mixture_nll(x8, raw))
    assert torch.equal(terms.train, terms.discretized)
    assert set(LIKELIHOODS) == {"gaussian_fixed", "gaussian_learned", "gaussian_shared", "gaussian_rgb", "logistic_mixture",
                                "categorical", "bernoulli"}
    with pytest.raises(ValueError):
        get("poisson")
    with pytest.raises(TypeError):
        _likelihood("logistic_mixture").nll(x8.float(), mean, raw)


def test_decoder_std_per_likelihood():
    from model.likelihoods import mixture_channels

    logvar = torch.full((2, 3, 4, 4), math.log(0.25))
    assert torch.allclose(_likelihood("gaussian_learned").std(logvar, 2), torch.full((2,), 0.5))
    assert torch.allclose(_likelihood("gaussian_fixed").std(torch.tensor(math.log(0.04)), 3), torch.full((3,), 0.2))
    # One component with log-scale log(s) everywhere: a logistic's standard deviation is s pi / sqrt(3).
    params = torch.zeros(2, mixture_channels(1), 4, 4)
    params[:, 4:7] = math.log(0.1)  # the log-scales of R, G, B (after the logit and the 3 means)
    assert torch.allclose(_likelihood("logistic_mixture").std(params, 2), torch.full((2,), 0.1 * math.pi / math.sqrt(3)))


def test_categorical_masses_sum_to_one_and_match_cross_entropy():
    from model.likelihoods import categorical_mean, categorical_nll

    torch.manual_seed(0)
    one = torch.randn(1, 256, 1, 1) * 3  # one sub-pixel's 256 logits
    every_level = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    assert torch.exp(-categorical_nll(every_level, one.expand(256, -1, -1, -1))).sum().item() == pytest.approx(
        1.0, abs=1e-5)
    params = torch.randn(2, 3 * 256, 2, 2) * 3
    x = torch.randint(0, 256, (2, 3, 2, 2), dtype=torch.uint8)
    logits = params.view(2, 3, 256, 2, 2).permute(0, 1, 3, 4, 2).reshape(-1, 256)
    independent = torch.nn.functional.cross_entropy(logits, x.long().reshape(-1), reduction="none").view(2, -1).sum(1)
    torch.testing.assert_close(categorical_nll(x, params), independent, rtol=1e-5, atol=1e-4)
    expected = (torch.softmax(params.view(2, 3, 256, 2, 2), 2) * torch.arange(256.0).view(1, 1, 256, 1, 1)).sum(2)
    torch.testing.assert_close(categorical_mean(params), expected / 127.5 - 1)
    second = (torch.softmax(params.view(2, 3, 256, 2, 2), 2) * torch.arange(256.0).view(1, 1, 256, 1, 1) ** 2).sum(2)
    std = (second - expected**2).sqrt().flatten(1).mean(1) / 127.5
    torch.testing.assert_close(_likelihood("categorical").std(params, 2), std, rtol=1e-4, atol=1e-5)


def test_bernoulli_on_binarised_pixels():
    from model.likelihoods import bernoulli_mean, bernoulli_nll, binarize

    x = torch.tensor([[[[0, 127], [128, 255]]]], dtype=torch.uint8).expand(1, 3, 2, 2)
    assert binarize(x)[0, 0].tolist() == [[0, 0], [255, 255]]
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]]).expand(1, 3, 2, 2)
    p_white = torch.sigmoid(logits)
    independent = -(torch.log(1 - p_white[..., 0, :]).sum() + torch.log(p_white[..., 1, :]).sum())
    torch.testing.assert_close(bernoulli_nll(x, logits), independent.view(1))
    one = torch.tensor(0.7).view(1, 1, 1, 1)  # one sub-pixel: the masses of black and white sum to 1
    outcomes = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    assert torch.exp(-bernoulli_nll(outcomes, one.expand(2, -1, -1, -1))).sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(bernoulli_mean(logits), 2 * p_white - 1)


@pytest.mark.parametrize("name", ["categorical", "bernoulli"])
def test_discrete_decoders_have_finite_gradients_at_extreme_logits(name):
    channels = 3 * 256 if name == "categorical" else 3
    params = torch.full((2, channels, 2, 2), 1e4).requires_grad_(True)
    with torch.no_grad():
        params[:, ::2] = -1e4
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    nll = _likelihood(name).nll(x, torch.zeros(2, 3, 2, 2), params)
    nll.train.sum().backward()
    assert torch.isfinite(nll.train).all() and torch.isfinite(params.grad).all() and (nll.discretized >= 0).all()


# ----------------------------------------------------------------------------- shared RGB covariance

RGB_COV = torch.tensor([[0.0167, 0.0127, 0.0114], [0.0127, 0.0155, 0.0127], [0.0114, 0.0127, 0.0155]])  # a run's


def _rgb_mass_independent(x8: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """P(bin of x) per pixel [N] in float64 from the Schur-complement conditionals (no Cholesky), Phi by ndtr."""
    x8, mean, cov = x8.reshape(-1, 3), mean.double().reshape(-1, 3), cov.double()
    x = x8.double() / 127.5 - 1
    residual = x - mean
    beta_g = cov[1, 0] / cov[0, 0]
    beta_b = torch.linalg.solve(cov[:2, :2], cov[:2, 2])
    means = torch.stack([mean[:, 0], mean[:, 1] + beta_g * residual[:, 0], mean[:, 2] + residual[:, :2] @ beta_b], 1)
    variances = torch.stack([cov[0, 0], cov[1, 1] - beta_g * cov[1, 0], cov[2, 2] - beta_b @ cov[:2, 2]])
    lower = torch.where(x8 == 0, -math.inf, (x8.double() - 128) / 127.5)
    upper = torch.where(x8 == 255, math.inf, (x8.double() - 127) / 127.5)
    std = variances.sqrt()
    mass = torch.special.ndtr((upper - means) / std) - torch.special.ndtr((lower - means) / std)
    return mass.prod(1)


def test_rgb_covariance_nll_matches_an_independent_computation_and_the_multivariate_normal():
    from model.likelihoods import rgb_cholesky, rgb_conditionals

    torch.testing.assert_close(rgb_cholesky(RGB_COV) @ rgb_cholesky(RGB_COV).T, RGB_COV)
    generator = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (2, 3, 4, 4), generator=generator, dtype=torch.uint8)
    x8[0, :, 0, 0] = torch.tensor([0, 255, 0], dtype=torch.uint8)  # open edge bins in every channel position
    mean = to_model_range(x8) + 0.1 * torch.randn(2, 3, 4, 4, generator=generator)
    terms = _likelihood("gaussian_rgb").nll(x8, mean, RGB_COV)
    independent = -_rgb_mass_independent(x8.permute(0, 2, 3, 1), mean.permute(0, 2, 3, 1), RGB_COV).log()
    torch.testing.assert_close(terms.discretized.double(), independent.view(2, 16).sum(1), rtol=1e-5, atol=1e-3)
    # the chain is the multivariate normal's density, factorised
    density = torch.distributions.MultivariateNormal(mean.permute(0, 2, 3, 1).double(), RGB_COV.double())
    continuous = -density.log_prob(to_model_range(x8).permute(0, 2, 3, 1).double()).flatten(1).sum(1)
    chain = gaussian_nll(to_model_range(x8), *rgb_conditionals(to_model_range(x8), mean, RGB_COV))
    torch.testing.assert_close(chain.double(), continuous, rtol=1e-5, atol=1e-3)
    # the training loss is the shared-sigma Gaussian's, at the covariance's mean variance
    torch.testing.assert_close(terms.train, gaussian_nll(to_model_range(x8), mean, RGB_COV.diagonal().mean().log()))


@pytest.mark.slow
def test_rgb_covariance_masses_sum_to_one_over_all_rgb_triples():
    from model.likelihoods import rgb_conditionals

    cov = RGB_COV * 4  # about 33 grey levels: most of the mass inside the range, the edge bins open
    mean = torch.tensor([0.9, -0.2, 0.4]).view(1, 3, 1, 1).expand(1, 3, 256, 256)
    gb = torch.stack(torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij"))
    total = torch.zeros((), dtype=torch.float64)
    for r in range(256):
        x8 = torch.cat([torch.full((1, 256, 256), r), gb]).unsqueeze(0).to(torch.uint8)
        conditional, logvar = rgb_conditionals(to_model_range(x8), mean, cov)
        nll = discretized_gaussian_nll_per_pixel(x8, conditional, logvar).double().sum(1)
        total += torch.exp(-nll).sum()
    assert abs(total.item() - 1.0) < 1e-4, total


def test_rgb_covariance_with_uncorrelated_channels_is_three_independent_gaussians():
    variances = torch.tensor([0.01, 0.02, 0.03])
    x8 = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    mean = to_model_range(x8) + 0.05
    rgb = _likelihood("gaussian_rgb").nll(x8, mean, torch.diag(variances))
    per_channel = variances.log().view(1, 3, 1, 1)
    torch.testing.assert_close(rgb.discretized, discretized_gaussian_nll(x8, mean, per_channel))


# ----------------------------------------------------------------------------- the compiled training step

TINY_NET = dict(channels=(8, 16, 32), depths=(0, 0, 0), mid_depth=0, latent_dim=16, num_mixtures=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_the_training_objective_compiles_in_one_graph_and_steps_as_eager(name):
    """fullgraph=True fails on any graph break (a float() or .item() of the running sigma would be one); two
    steps compiled, with the trainer's keyed posterior noise and a tensor KL weight, give the eager steps' loss,
    statistics, codes, gradients and running buffers. aot_eager runs the graph capture and the functionalisation of
    the buffer updates that inductor gets, without its code generation (minutes per network on a CPU; the next test
    runs inductor on the likelihood's own step)."""
    import copy

    from model import VAE
    from model.noise import image_seeds, keyed_normal
    from train.objective import VAEObjective

    torch._dynamo.reset()
    torch.manual_seed(0)
    vae = VAE(VAEConfig(likelihood=name, **TINY_NET))
    eager = copy.deepcopy(vae)
    compiled = torch.compile(VAEObjective(vae), fullgraph=True, backend="aot_eager")
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    for step in range(2):
        results = []
        for model, objective in ((vae, compiled), (eager, VAEObjective(eager))):
            model.zero_grad()
            eps = keyed_normal(image_seeds(["a", "b"], 0, "cpu", epoch=step), 1, model.cfg.latent_dim)[0]
            loss, stats, codes = objective(images, torch.tensor(0.5), eps)
            loss.backward()
            results.append((stats, codes, [p.grad for p in model.parameters()], [b.clone() for b in model.buffers()]))
        (stats, codes, grads, buffers), (eager_stats, eager_codes, eager_grads, eager_buffers) = results
        torch.testing.assert_close(stats, eager_stats, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(codes, eager_codes, rtol=1e-4, atol=1e-4)
        for grad, eager_grad in zip(grads, eager_grads):
            torch.testing.assert_close(grad, eager_grad, rtol=1e-2, atol=1e-3)  # summation order differs
        for buffer, eager_buffer in zip(buffers, eager_buffers):
            torch.testing.assert_close(buffer, eager_buffer)
    if name in ("gaussian_shared", "gaussian_rgb"):
        assert int(vae.decoder.shared_updates) == 2


@pytest.mark.slow
def test_inductor_compiles_the_running_covariance_update_and_the_nll():
    """The shared-covariance step (closed-form batch covariance, its in-place running average, the training and
    evaluation NLL, the std) as inductor code, twice: the same values, gradient and buffers as eager."""
    import copy

    from model import VAE

    torch._dynamo.reset()
    decoder = VAE(VAEConfig(likelihood="gaussian_rgb", **TINY_NET)).decoder
    eager_decoder = copy.deepcopy(decoder)
    likelihood = decoder.likelihood

    def step(x8, x_mean, owner):
        cov = likelihood.batch_params(to_model_range(x8), x_mean, owner.shared_cov, owner)
        nll = likelihood.nll(x8, x_mean, cov)
        return nll.train.sum(), nll.discretized, likelihood.std(cov, len(x8))

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    generator = torch.Generator().manual_seed(2)
    x8 = torch.randint(0, 256, (2, 3, 8, 8), generator=generator, dtype=torch.uint8)
    for _ in range(2):
        mean = to_model_range(x8) + 0.1 * torch.randn(2, 3, 8, 8, generator=generator)
        results = []
        for owner, run in ((decoder, compiled), (eager_decoder, step)):
            x_mean = mean.clone().requires_grad_(True)
            train, discretized, std = run(x8, x_mean, owner)
            train.backward()
            results.append((train, discretized, std, x_mean.grad, owner.shared_cov.clone()))
        for got, expected in zip(*results):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert int(decoder.shared_updates) == 2
