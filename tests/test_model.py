"""Model tests: every layer/block on its own (timm-style, parametrised), then encoder/decoder/VAE, then presets.

Sizes are tiny so the file runs in seconds on 2 CPU cores.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from model import (LIKELIHOODS, PRESETS, VAE, VAEConfig, create_vae, gaussian_nll, kl_diag_gaussian,
                   logistic_mixture_mean, to_model_range, to_uint8)
from model.blocks import (
    DownBlock,
    ResNeXtBottleneck,
    UpBlock,
    channel_to_space_shortcut,
    space_to_channel_shortcut,
)
from model.layers import ConvNormAct, LayerScale, SqueezeExcite, num_groups
from model.likelihoods import GaussianShared



# A small 3-stage config (64 -> 32 -> 16 -> 8) that keeps every code path of the real presets.
SMALL = dict(channels=(8, 16, 16), depths=(1, 1, 1), mid_depth=1)


def _fwd_bwd(module, x):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    return y


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize(
    "channels,expected",
    [(4, 1), (8, 2), (16, 4), (32, 8), (64, 16), (96, 24), (128, 32), (256, 32), (512, 32), (3, 1)],
)
def test_num_groups_rule(channels, expected):
    # 32 groups, or fewer so that each group keeps >= 4 channels
    assert num_groups(channels) == expected
    assert channels % expected == 0


@pytest.mark.parametrize(
    "cin,cout,k,stride,groups,act",
    [(3, 16, 3, 1, 1, True), (16, 8, 1, 1, 1, True), (16, 16, 3, 1, 4, True), (16, 32, 3, 2, 1, False)],
)
def test_conv_norm_act(cin, cout, k, stride, groups, act):
    m = ConvNormAct(cin, cout, kernel_size=k, stride=stride, groups=groups, act=act)
    y = _fwd_bwd(m, torch.randn(2, cin, 8, 8))
    assert y.shape == (2, cout, 8 // stride, 8 // stride)
    assert m[0].groups == groups and m[0].bias is None
    assert isinstance(m[2], torch.nn.SiLU if act else torch.nn.Identity)


@pytest.mark.parametrize("channels", [8, 32, 128])
def test_squeeze_excite(channels):
    m = SqueezeExcite(channels)
    x = torch.rand(2, channels, 4, 4) + 0.5  # away from 0 so y / x is well conditioned
    y = _fwd_bwd(m, x)
    assert y.shape == x.shape
    # a per-channel gate in (0, 1): y / x is constant over space and inside (0, 1)
    ratio = (y / x).detach()
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5)
    assert (ratio > 0).all() and (ratio < 1).all()


def test_layer_scale():
    m = LayerScale(4, init_value=0.1)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(m(x), 0.1 * x)
    _fwd_bwd(m, x)


# ----------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("channels", [16, 32, 64, 128])
def test_resnext_bottleneck(channels):
    m = ResNeXtBottleneck(channels)
    x = torch.randn(2, channels, 8, 8)
    y = _fwd_bwd(m, x)
    assert y.shape == x.shape
    mid = m.conv[0].in_channels
    assert m.conv[0].groups == num_groups(mid)
    assert isinstance(m.expand[2], torch.nn.Identity)  # no activation on the expand conv


def test_resnext_bottleneck_is_identity_with_zero_layer_scale():
    m = ResNeXtBottleneck(16, layer_scale_init=0.0)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(m(x), x)


@pytest.mark.parametrize("cin,cout", [(16, 16), (16, 32), (16, 64), (32, 16), (64, 128)])
def test_down_block(cin, cout):
    m = DownBlock(cin, cout)
    y = _fwd_bwd(m, torch.randn(2, cin, 8, 8))
    assert y.shape == (2, cout, 4, 4)


@pytest.mark.parametrize("cin,cout", [(16, 16), (32, 16), (64, 16), (16, 32), (128, 64)])
def test_up_block(cin, cout):
    m = UpBlock(cin, cout)
    y = _fwd_bwd(m, torch.randn(2, cin, 4, 4))
    assert y.shape == (2, cout, 8, 8)


@pytest.mark.parametrize("cin,cout", [(16, 48), (8, 64)])
def test_down_block_rejects_inexact_averaging(cin, cout):
    with pytest.raises(ValueError, match="divisible"):
        DownBlock(cin, cout)


@pytest.mark.parametrize("cin,cout", [(48, 16), (64, 8)])
def test_up_block_rejects_inexact_duplication(cin, cout):
    with pytest.raises(ValueError, match="divisible"):
        UpBlock(cin, cout)


def test_config_rejects_incompatible_stage_widths():
    with pytest.raises(ValueError, match="divisible"):
        VAEConfig(channels=(16, 48, 48), depths=(1, 1, 1))


@pytest.mark.parametrize("cin,cout", [(4, 4), (4, 8), (4, 16), (8, 4), (6, 8)])
def test_space_to_channel_shortcut_matches_definition(cin, cout):
    x = torch.randn(2, cin, 6, 4)
    y = space_to_channel_shortcut(x, cout)
    # Definition (DC-AE 3.2): unshuffled channel u = c*4 + dy*2 + dx holds x[c, 2i+dy, 2j+dx];
    # output channel o averages the consecutive unshuffled channels o*g .. o*g+g-1, g = 4*cin/cout.
    g = 4 * cin // cout
    ref = torch.zeros(2, cout, 3, 2)
    for o in range(cout):
        for t in range(g):
            u = o * g + t
            c, dy, dx = u // 4, (u % 4) // 2, u % 2
            ref[:, o] += x[:, c, dy::2, dx::2] / g
    torch.testing.assert_close(y, ref)
    if cin == cout:  # averaging groups of 4 = 2x2 average pooling
        torch.testing.assert_close(y, F.avg_pool2d(x, 2))


@pytest.mark.parametrize("cin,cout", [(4, 4), (8, 4), (16, 4), (4, 8), (8, 6)])
def test_channel_to_space_shortcut_matches_definition(cin, cout):
    x = torch.randn(2, cin, 3, 2)
    y = channel_to_space_shortcut(x, cout)
    # Definition: duplicate each channel r = 4*cout/cin times (consecutively), then pixel_shuffle:
    # out[o, 2i+dy, 2j+dx] = duplicated channel u = o*4 + dy*2 + dx = x[u // r, i, j].
    r = 4 * cout // cin
    ref = torch.zeros(2, cout, 6, 4)
    for o in range(cout):
        for dy in range(2):
            for dx in range(2):
                ref[:, o, dy::2, dx::2] = x[:, (o * 4 + dy * 2 + dx) // r]
    torch.testing.assert_close(y, ref)
    if cin == cout:  # duplicating each channel 4x = nearest-neighbour upsampling
        torch.testing.assert_close(y, F.interpolate(x, scale_factor=2, mode="nearest"))


# ----------------------------------------------------------------------------- encoder / decoder / VAE


@pytest.mark.parametrize("latent_dim", [128, 512, 2048])
def test_encoder_decoder_shapes(latent_dim):
    vae = VAE(VAEConfig(latent_dim=latent_dim, **SMALL))
    cfg = vae.cfg
    assert cfg.latent_resolution == 8
    # the Linear sees every position of the flattened map (no global pooling), never fewer than 2*latent
    assert vae.encoder.to_latent.in_features == 8 * 8 * cfg.bottleneck_channels >= 2 * latent_dim
    assert vae.decoder.from_latent.out_features == 8 * 8 * cfg.bottleneck_channels
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        assert mu.shape == logvar.shape == (2, latent_dim)
        mean, lv = vae.decode(mu)
    assert mean.shape == lv.shape == (2, 3, 64, 64)



def test_spatial_latent_is_channel_major_and_local():
    """latent_channels C: the codes are a [C, 8, 8] map flattened channel by channel, each from its own position."""
    vae = VAE(VAEConfig(latent_dim=4 * 64, latent_channels=4, **SMALL)).eval()
    assert vae.encoder.to_latent.bias.shape == (8 * 64,)  # (mu, logvar) x 4 channels x 8 x 8 positions
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        enc = vae.encoder
        h = enc.stem(x)
        for stage in enc.stages:
            h = stage(h)
        h = enc.conv_out(enc.act(enc.norm_out(enc.mid(h))))
        conv = enc.to_latent
        # component (c, i, j) = output channel c of one channel mixing at position (i, j), plus its own bias
        expected = torch.einsum("ok,bkij->boij", conv.weight, h) + conv.bias.view(8, 8, 8)
        torch.testing.assert_close(mu, expected[:, :4].flatten(1))
        torch.testing.assert_close(logvar, expected[:, 4:].flatten(1))
        mean, _ = vae.decode(mu)
    assert mu.shape == (2, 256) and mean.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="latent_channels"):
        VAEConfig(latent_dim=250, latent_channels=4, **SMALL)

def test_learned_logvar_stays_inside_clamp_for_extreme_inputs():
    cfg = VAEConfig(likelihood="gaussian_learned", latent_dim=32, **SMALL)
    vae = VAE(cfg)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(1e3)  # push the raw head far outside the range
        lo, hi = cfg.logvar_range
        for scale in (1e-3, 1.0, 1e3, 1e5):
            z = torch.randn(4, 32) * scale
            _, lv = vae.decode(z)
            assert lv.min() >= lo and lv.max() <= hi
            _, lv = vae.decode(-z)
            assert lv.min() >= lo and lv.max() <= hi
        # extreme images keep the encoder's log-variance finite too
        mu, logvar = vae.encode(torch.full((2, 3, 64, 64), 1e4))
        assert torch.isfinite(mu).all() and torch.isfinite(logvar).all()


def test_fixed_head_returns_constant_logvar():
    cfg = VAEConfig(likelihood="gaussian_fixed", fixed_logvar=-3.0, latent_dim=32, **SMALL)
    vae = VAE(cfg)
    mean, lv = vae.decode(torch.randn(2, 32))
    assert mean.shape == (2, 3, 64, 64)
    assert lv.dim() == 0 and lv.item() == -3.0
    assert vae.decoder.conv_out.out_channels == 3


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_forward_backward(likelihood):
    vae = VAE(VAEConfig(likelihood=likelihood, latent_dim=64, num_mixtures=3, **SMALL))
    x8 = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    x = to_model_range(x8)
    out = vae(x)
    assert out.z.shape == out.mu.shape == out.logvar.shape == (3, 64)
    assert out.x_mean.shape == (3, 3, 64, 64)
    nll = vae.decoder.likelihood.nll(x8, out.x_mean, out.x_params)
    assert nll.train.shape == nll.discretized.shape == (3,) and (nll.discretized >= 0).all()
    loss = (nll.train + kl_diag_gaussian(out.mu, out.logvar)).mean()
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert vae.encoder.stem.weight.grad.abs().sum() > 0  # the gradient reaches the input layer


def test_mixture_head_returns_params_and_their_mean():
    cfg = VAEConfig(likelihood="logistic_mixture", num_mixtures=4, latent_dim=32, **SMALL)
    vae = VAE(cfg)
    assert vae.decoder.conv_out.out_channels == 40
    mean, params = vae.decode(torch.randn(2, 32))
    assert params.shape == (2, 40, 64, 64) and mean.shape == (2, 3, 64, 64)
    torch.testing.assert_close(mean, logistic_mixture_mean(params))
    with pytest.raises(ValueError):
        VAEConfig(likelihood="logistic_mixture", num_mixtures=0)


def test_shared_sigma_is_the_batch_optimum_in_training_and_the_running_value_in_eval():
    cfg = VAEConfig(likelihood="gaussian_shared", latent_dim=16, shared_sigma_decay=0.5, **SMALL)
    vae = VAE(cfg)
    assert vae.decoder.conv_out.out_channels == 3
    assert vae.decoder.shared_logvar.item() == pytest.approx(cfg.fixed_logvar)  # the starting value
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    out = vae.train()(x)
    mse = (x - out.x_mean).square().mean()
    assert out.x_logvar.dim() == 0
    torch.testing.assert_close(out.x_logvar, mse.log())
    # the closed form is the optimum of the batch's Gaussian NLL over one shared log-variance
    for delta in (-0.05, 0.05):
        assert gaussian_nll(x, out.x_mean, out.x_logvar).sum() < gaussian_nll(x, out.x_mean, out.x_logvar + delta).sum()
    # update 0 has decay min(0.5, 1/10): the running sigma^2 moves 90 % of the way to the batch's
    expected = math.log(0.1 * math.exp(cfg.fixed_logvar) + 0.9 * mse.item())
    assert vae.decoder.shared_logvar.item() == pytest.approx(expected, rel=1e-5)
    for _ in range(30):
        vae(x)
    running = vae.decoder.shared_logvar.item()
    vae.eval()
    assert vae(x).x_logvar.item() == running and vae.decode(out.mu)[1].item() == running
    # saved with the weights, so eval and edit see the same global sigma
    state = vae.state_dict()
    assert "decoder.shared_logvar" in state
    fresh = VAE(cfg)
    fresh.load_state_dict(state)
    assert fresh.decoder.shared_logvar.item() == running
    # the Gaussian heads without a shared sigma keep their state-dict keys
    assert not any("shared" in key for key in VAE(VAEConfig(latent_dim=16, **SMALL)).state_dict())


def test_rgb_covariance_is_the_batch_residual_covariance_in_training_and_the_running_value_in_eval():
    cfg = VAEConfig(likelihood="gaussian_rgb", latent_dim=16, shared_sigma_decay=0.5, **SMALL)
    vae = VAE(cfg)
    assert vae.decoder.conv_out.out_channels == 3
    torch.testing.assert_close(vae.decoder.shared_cov, torch.eye(3) * math.exp(cfg.fixed_logvar))
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    out = vae.train()(x)
    residual = (x - out.x_mean).detach().transpose(0, 1).reshape(3, -1)
    floor = math.exp(cfg.logvar_range[0]) * torch.eye(3)
    torch.testing.assert_close(out.x_params, residual @ residual.T / residual.shape[1] + floor)
    # the batch covariance is the optimum of the batch's Gaussian NLL over shared covariances (up to the floor)
    x8 = to_uint8(x)
    rgb = vae.decoder.likelihood
    best = rgb.nll(x8, out.x_mean.detach(), out.x_params).discretized.sum()
    for scale in (0.9, 1.1):
        assert best < rgb.nll(x8, out.x_mean.detach(), out.x_params * scale).discretized.sum()
    # and the training loss is the shared-sigma head's: sigma^2 = the batch MSE (plus the floor)
    shared = GaussianShared(cfg).nll(x8, out.x_mean, ((to_model_range(x8) - out.x_mean).square().mean()
                                                      + floor[0, 0]).log())
    torch.testing.assert_close(rgb.nll(x8, out.x_mean, out.x_params).train, shared.train, rtol=2e-3, atol=0.5)
    for _ in range(30):
        vae(x)
    running = vae.decoder.shared_cov.clone()
    vae.eval()
    assert torch.equal(vae(x).x_params, running) and torch.equal(vae.decode(out.mu)[1], running)
    fresh = VAE(cfg)
    fresh.load_state_dict(vae.state_dict())
    assert torch.equal(fresh.decoder.shared_cov, running)


@pytest.mark.parametrize("model,latent_channels", [("vae", 0), ("ae", 0), ("vae", 2)])
def test_recentring_the_codes_keeps_every_decoding_and_lowers_the_kl(model, latent_channels):
    from model.vae import recentre_codes

    latent_dim = 2 * 64 if latent_channels else 16
    vae = VAE(VAEConfig(latent_dim=latent_dim, latent_channels=latent_channels, model=model, **SMALL)).eval()
    with torch.no_grad():
        vae.encoder.to_latent.bias.add_(0.5)  # codes off the origin, as training leaves them
    x = torch.rand(8, 3, 64, 64) * 2 - 1
    mu, logvar = vae.encode(x)
    before = vae.decode(mu)[0]
    shift = mu.mean(0)
    recentre_codes(vae.state_dict(), shift)
    centred, centred_logvar = vae.encode(x)
    torch.testing.assert_close(centred, mu - shift)
    torch.testing.assert_close(centred.mean(0), torch.zeros(latent_dim), atol=1e-5, rtol=0)
    torch.testing.assert_close(vae.decode(centred)[0], before, atol=1e-5, rtol=1e-4)
    if model == "vae":
        torch.testing.assert_close(centred_logvar, logvar)
        # shift = the batch's mean code: the batch's mean KL drops by exactly |shift|^2 / 2
        drop = kl_diag_gaussian(mu, logvar) - kl_diag_gaussian(centred, centred_logvar)
        torch.testing.assert_close(drop.mean(), 0.5 * shift.square().sum())


def test_reparameterize_is_seedable_and_deterministic_mode_uses_mu():
    vae = VAE(VAEConfig(latent_dim=16, **SMALL)).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a = vae(x, generator=torch.Generator().manual_seed(1)).z
        b = vae(x, generator=torch.Generator().manual_seed(1)).z
        c = vae(x, generator=torch.Generator().manual_seed(2)).z
        out = vae(x, sample_posterior=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(out.z, out.mu)
    samples = vae.sample(3, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 3, 64, 64)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_bf16_autocast_keeps_outputs_float32(likelihood):
    vae = VAE(VAEConfig(likelihood=likelihood, latent_dim=16, num_mixtures=2, **SMALL))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vae(torch.rand(2, 3, 64, 64) * 2 - 1)
    # the body runs in bf16, the output layers in float32 (bf16 is coarser than a grey level near 1)
    for t in out:
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    if likelihood == "gaussian_fixed":
        assert out.x_logvar.item() == pytest.approx(vae.cfg.fixed_logvar)


def test_config_roundtrip_and_overrides():
    cfg = VAEConfig.from_preset("tiny", latent_dim=2048)
    assert cfg.bottleneck_channels == 64  # 8*8*64 = 4096 = 2 * 2048
    again = VAEConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()})
    assert again == cfg  # survives JSON (tuples -> lists)
    with pytest.raises(KeyError):
        create_vae("huge")
    with pytest.raises(ValueError):
        VAEConfig(likelihood="poisson")


# ----------------------------------------------------------------------------- presets


def test_tiny_preset_forward_backward_batch32():
    vae = create_vae("tiny")
    x = torch.rand(32, 3, 64, 64) * 2 - 1
    out = vae(x)
    loss = (gaussian_nll(x, out.x_mean, out.x_logvar) + kl_diag_gaussian(out.mu, out.logvar)).mean()
    loss.backward()
    assert torch.isfinite(loss)


PARAM_BOUNDS = {"tiny": (1e5, 3e6), "cpu": (1e5, 3e6), "gpu": (5e6, 5e7), "base": (5e6, 5e7), "large": (1e7, 1e8)}


def test_gpu_preset_is_base_with_the_cpu_recipe_s_decoder():
    gpu, base = create_vae("gpu").cfg, VAEConfig.from_preset("base")
    assert (gpu.channels, gpu.depths, gpu.mid_depth, gpu.latent_dim) == (base.channels, base.depths, 1, 512)
    assert gpu.likelihood == "gaussian_rgb" and gpu.decoder_norm == "none"
    assert not [m for m in create_vae("gpu").decoder.modules() if isinstance(m, torch.nn.GroupNorm)]


def test_cpu_preset_is_the_cheap_decoder_with_the_rgb_covariance_and_overrides_still_apply():
    vae = create_vae("cpu")
    assert vae.cfg.likelihood == "gaussian_rgb" and vae.cfg.decoder_norm == "none" and vae.cfg.latent_dim == 256
    assert vae.decoder.stages[-1][0].mode == "pixel_shuffle" and len(vae.decoder.stages[-1][1]) == 0
    mixture = create_vae("cpu", likelihood="logistic_mixture")
    assert mixture.cfg.num_mixtures == 3 and mixture.decoder.conv_out.out_channels == 3 * 10  # K (1 + 3 + 3 + 3) parameters


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build(preset):
    vae = create_vae(preset)
    lo, hi = PARAM_BOUNDS[preset]
    assert lo < vae.num_params() < hi
    with torch.no_grad():  # batch 1 only: the big presets are for the GPU
        out = vae.eval()(torch.zeros(1, 3, 64, 64), sample_posterior=False)
    assert out.x_mean.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("latent_dim", [128, 2048])
def test_any_latent_fits_any_preset(preset, latent_dim):
    cfg = VAEConfig.from_preset(preset, latent_dim=latent_dim)
    assert cfg.latent_resolution**2 * cfg.bottleneck_channels >= 2 * latent_dim


# ----------------------------------------------------------------------------- CPU-cheap full-resolution options


@pytest.mark.parametrize("cin, cout", [(32, 16), (64, 64), (16, 16)])
def test_pixel_shuffle_up_block(cin, cout):
    block = UpBlock(cin, cout, mode="pixel_shuffle")
    assert block.conv.kernel_size == (1, 1) and block.conv.out_channels == 4 * cout
    x = torch.randn(2, cin, 8, 8)
    assert block(x).shape == (2, cout, 16, 16)
    torch.nn.init.zeros_(block.conv.weight)
    torch.nn.init.zeros_(block.conv.bias)
    torch.testing.assert_close(block(x), channel_to_space_shortcut(x, cout))  # branch off: the DC-AE shortcut
    with pytest.raises(ValueError):
        UpBlock(cin, cout, mode="nearest")


def test_cheap_full_resolution_config():
    cfg = VAEConfig(last_upsample="pixel_shuffle", head_kernel_size=1, depths=(0, 1, 1), latent_dim=16,
                    channels=(16, 32, 64), mid_depth=0)
    vae = VAE(cfg)
    ups = [stage[0] for stage in vae.decoder.stages]
    assert [u.mode for u in ups] == ["bilinear", "bilinear", "pixel_shuffle"]  # only the last, full-res one
    assert vae.decoder.conv_out.kernel_size == (1, 1)
    assert len(vae.encoder.stages[0][0]) == 0 and len(vae.decoder.stages[-1][1]) == 0  # no full-res blocks
    out = vae(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert out.x_mean.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError):
        VAEConfig(last_upsample="nearest")
    with pytest.raises(ValueError):
        VAEConfig(head_kernel_size=5)


def test_norm_free_decoder():
    cfg = VAEConfig(decoder_norm="none", latent_dim=16, **SMALL)
    vae = VAE(cfg)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in vae.decoder.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in vae.encoder.modules())  # the encoder keeps GroupNorm
    assert all(m.bias is not None for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d))
    out = vae(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert out.x_mean.shape == (2, 3, 64, 64) and torch.isfinite(out.x_mean).all()
    with pytest.raises(ValueError):
        VAEConfig(decoder_norm="batch")


def test_group_norm_decoder_is_nearly_scale_invariant_in_z_and_the_norm_free_one_is_not():
    """Why decoder_norm="none" exists: GroupNorm divides out the size of the z-driven features, so at init a
    GroupNorm decoder moves almost as far from decode(0) at temperature 0.2 as at 1.0 (blobs at every
    temperature); the norm-free decoder moves about 0.2x as far."""
    ratios = {}
    for norm in ("group", "none"):
        torch.manual_seed(0)
        vae = VAE(VAEConfig(decoder_norm=norm, latent_dim=32, **SMALL)).eval()
        eps = torch.randn(8, 32)
        with torch.no_grad():
            base = vae.decode(torch.zeros(8, 32))[0]
            dev = {t: (vae.decode(t * eps)[0] - base).std().item() for t in (0.2, 1.0)}
        ratios[norm] = dev[0.2] / dev[1.0]
    assert ratios["group"] > 0.5, ratios
    assert ratios["none"] < 0.3, ratios
