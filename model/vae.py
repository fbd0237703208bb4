"""The VAE: config, encoder, decoder, presets.

Shapes for the default 64x64 input and 3 stages (channels c0, c1, c2; r = 64 / 2**3 = 8):

    encoder  x [B,3,64,64] -> stem conv -> c0@64 -> {blocks, DownBlock} x3 -> c2@8 -> mid blocks
             -> GN,SiLU,conv -> Cb@8 -> flatten [B, 8*8*Cb] -> Linear -> (mu, logvar) [B, latent]
    decoder  z [B, latent] -> Linear -> [B, Cb, 8, 8] -> conv -> c2@8 -> mid blocks
             -> {UpBlock, blocks} x3 -> c0@64 -> GN,SiLU,conv -> mean (and log-variance) [B,3,64,64]

With a spatial latent (latent_channels C > 0) the Linear layers become 1x1 convs: Cb@8 -> (mu, logvar) each
[B, C, 8, 8], flattened channel by channel to [B, C*64]; the decoder views z as [B, C, 8, 8] -> 1x1 conv -> Cb@8
(layers.PositionwiseLinear: a bias per channel and position).

No global average pooling: the Linear layers see every position (the course's advice). Inputs are floats
in the model range [-1, 1] (see metrics.to_model_range); the decoder mean is unbounded (the
discretized likelihood's open edge bins take care of values outside [-1, 1]).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from .blocks import DownBlock, ResNeXtBottleneck, UpBlock
from .layers import PositionwiseLinear, num_groups
from .kinds import KINDS, ModelKind, get as get_kind
from .likelihoods import create as create_likelihood, get as get_likelihood
from .metrics import to_model_range

MODELS = tuple(KINDS)


@dataclass
class VAEConfig:
    image_size: int = 64
    in_channels: int = 3
    channels: tuple[int, ...] = (128, 256, 512)  # width of each stage; one DownBlock per stage
    depths: tuple[int, ...] = (2, 2, 2)  # ResNeXt bottlenecks per stage
    mid_depth: int = 1  # ResNeXt bottlenecks at the lowest resolution (encoder and decoder each)
    latent_dim: int = 512
    # channels of the feature map that is flattened into the Linear to/from the latent. None: the
    # smallest multiple of 8 (at least 16) with r*r*Cb >= 2*latent_dim, so the Linear never has
    # fewer inputs than the (mu, logvar) it must produce.
    bottleneck_channels: int | None = None
    # 0: a dense latent (the Linear layers above). C > 0: a spatial latent, C channels at the bottleneck resolution
    # (latent_dim = C r^2), from and to the Cb-channel feature map by 1x1 convs with a bias per position.
    latent_channels: int = 0
    # Decoder likelihood: a name in model.likelihoods.LIKELIHOODS (gaussian_fixed, gaussian_learned,
    # gaussian_shared, gaussian_rgb, logistic_mixture, categorical, bernoulli), each documented in its class.
    likelihood: str = "gaussian_learned"
    # The model kind, a name in model.kinds.KINDS: "vae", "ae" (deterministic autoencoder), "aae" (adversarial
    # autoencoder), each documented there.
    model: str = "vae"
    discriminator_width: int = 256  # "aae": hidden width of the latent discriminator
    num_mixtures: int = 10  # components of the logistic mixture (10K decoder output channels)
    # Running average of the shared sigma^2 (or RGB covariance): decay min(shared_sigma_decay, (1 + n) / (10 + n))
    # at update n.
    shared_sigma_decay: float = 0.99
    # Clamp of the learned per-pixel decoder log-variance, model units (pixels in [-1, 1], one grey
    # level = 2/255). Low end: exp(-10/2) = 0.0067 = 0.86 grey level, i.e. the decoder may become
    # about as certain as one quantisation bin (where the continuous density still approximates the
    # bin's mass) but cannot drive the training NLL to -inf on saturated (0/255) pixels. High end:
    # exp(1/2) = 1.65 > the whole data range, enough to say "no idea", while bounding how far the
    # decoder can give up on a pixel (the artifacts the course warns about). The course's (-3, 3) would floor
    # sigma at 0.22 = 29 grey levels and cap the achievable bits/dim.
    logvar_range: tuple[float, float] = (-10.0, 1.0)
    # Decoder log-variance of the fixed-sigma head: sigma = exp(-4.6/2) = 0.1 (13 grey levels); also the
    # shared-sigma head's starting value (and the RGB covariance's, times the identity).
    fixed_logvar: float = -4.6
    # Safety clamp of the encoder's log-variance: keeps exp() finite in bf16/fp32, never binds in practice.
    enc_logvar_range: tuple[float, float] = (-30.0, 20.0)
    # The decoder's last UpBlock (to full resolution): "bilinear" (bilinear x2 then a 3x3 conv at full
    # resolution, the course's) or "pixel_shuffle" (1x1 conv at half resolution then pixel_shuffle: 9x fewer
    # multiply-adds where the CPU spends most). The other UpBlocks are always bilinear.
    last_upsample: str = "bilinear"
    # Normalisation in the decoder: "group" (GroupNorm everywhere, the course's) or "none" (no norm layer in the
    # decoder; convs get biases; LayerScale keeps the residual blocks near identity at init, as in VDVAE's
    # norm-free decoder). GroupNorm divides out the magnitude of the z-driven features, so a decoder built
    # from it answers z = 0.2 eps with nearly the structure of z = eps (the temperature grid shows blobs at
    # every temperature); without it, the decoder is closer to linear in small z and low temperatures decode
    # to an average face. The encoder always uses GroupNorm.
    decoder_norm: str = "group"
    head_kernel_size: int = 3  # kernel of the decoder's output conv (3, or 1 for a cheap full-resolution head)
    mid_ratio: float = 0.5  # ResNeXt bottleneck width / block width
    se_ratio: float = 0.25  # SE hidden width / block width
    layer_scale_init: float = 1e-2

    def __post_init__(self):
        # Tuples, also when the config comes back from JSON (lists).
        self.channels = tuple(int(c) for c in self.channels)
        self.depths = tuple(int(d) for d in self.depths)
        self.logvar_range = tuple(float(v) for v in self.logvar_range)
        self.enc_logvar_range = tuple(float(v) for v in self.enc_logvar_range)
        if len(self.channels) != len(self.depths) or not self.channels:
            raise ValueError(f"channels {self.channels} and depths {self.depths} need equal, nonzero length")
        get_kind(self.model)
        get_likelihood(self.likelihood).check(self)
        if self.image_size % (2 ** len(self.channels)) != 0:
            raise ValueError(f"image_size {self.image_size} not divisible by 2**{len(self.channels)}")
        if self.last_upsample not in UpBlock.MODES:
            raise ValueError(f"last_upsample must be one of {UpBlock.MODES}, got {self.last_upsample!r}")
        if self.decoder_norm not in ("group", "none"):
            raise ValueError(f"decoder_norm must be 'group' or 'none', got {self.decoder_norm!r}")
        if self.head_kernel_size not in (1, 3):
            raise ValueError(f"head_kernel_size must be 1 or 3, got {self.head_kernel_size}")
        if not 0.0 <= self.shared_sigma_decay < 1.0:
            raise ValueError(f"shared_sigma_decay must be in [0, 1), got {self.shared_sigma_decay}")
        if not self.logvar_range[0] < self.logvar_range[1]:
            raise ValueError(f"logvar_range must be (low, high) with low < high, got {self.logvar_range}")
        # DownBlock(c_i -> c_{i+1}) and UpBlock(c_{i+1} -> c_i) both need 4*c_i % c_{i+1} == 0.
        widths = self.channels + self.channels[-1:]
        for a, b in zip(widths[:-1], widths[1:]):
            if (4 * a) % b != 0:
                raise ValueError(
                    f"channels {self.channels}: 4*{a} is not divisible by {b}; the DC-AE shortcuts "
                    f"need each stage width times 4 to be a multiple of the next one"
                )
        if self.latent_channels and self.latent_dim != self.latent_channels * self.latent_resolution**2:
            raise ValueError(f"latent_dim {self.latent_dim} must be latent_channels {self.latent_channels} x "
                             f"{self.latent_resolution}^2 for a spatial latent")
        if self.bottleneck_channels is None:
            need = math.ceil(2 * self.latent_dim / self.latent_resolution**2)
            self.bottleneck_channels = max(16, 8 * math.ceil(need / 8))

    @property
    def kind(self) -> ModelKind:
        return get_kind(self.model)

    @property
    def point_latent(self) -> bool:
        """The autoencoders (ae, aae): z = mu, no posterior variance, so no KL, ELBO or harmonic metric."""
        return self.kind.point_latent

    @property
    def latent_resolution(self) -> int:
        return self.image_size // 2 ** len(self.channels)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "VAEConfig":
        if preset not in PRESETS:
            raise KeyError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


# Preset name -> VAEConfig keyword arguments. Overrides (e.g. latent_dim=2048) apply on top and the
# derived fields (bottleneck_channels) are computed afterwards, so any latent 128-2048 fits any preset.
PRESETS: dict[str, dict] = {
    # CPU tests and the CPU demo: fwd+bwd at batch 32 in ~0.3 s on 2 cores. Thin full-res stages because
    # the 3x3 convs at 64x64 (after the last bilinear upsample) dominate the CPU cost.
    "tiny": dict(channels=(16, 32, 64), depths=(1, 1, 1), mid_depth=0, latent_dim=128),
    # CPU budgets (BENCHMARKS.md): the tiny widths without the full-resolution ResNeXt blocks, the last
    # upsample as 1x1 conv + pixel_shuffle (together 1.4x the tiny network's images per CPU-second), a norm-free
    # decoder (low temperatures decode towards an average face instead of blobs), latent 256 (synthetic, 1,350
    # steps: PSNR 27.4 dB against 26.6 at 128) and the RGB-covariance Gaussian: sigma-VAE's training loss, scored
    # with the residuals' shared RGB covariance (real sample, 20 minutes: 5.54 bits/dim against 6.06 with one
    # sigma, the same 24.1 dB PSNR). The coupled logistic mixture (--likelihood logistic_mixture, K = 3 here)
    # reaches ~0.6 bits/dim less again, but its pictures are far worse (PSNR 22.5 vs 26.6 dB, judge-feature FD of
    # reconstructions 0.50 vs 0.056, latent 128), and the course grades pictures.
    "cpu": dict(channels=(16, 32, 64), depths=(0, 1, 1), mid_depth=0, latent_dim=256, likelihood="gaussian_rgb",
                num_mixtures=3, last_upsample="pixel_shuffle", decoder_norm="none"),
    # GPUs: the course's reference widths and depths with everything the `cpu` preset's measurements taught: the
    # norm-free decoder (GroupNorm's decoder turns low temperatures into blobs, at 1/8 and 1/4 of these widths too),
    # the RGB-covariance Gaussian, latent 512. The last upsample stays bilinear: on a GPU pixel_shuffle would save 20%
    # of the 32 GFLOP per image (forward + backward), far less than the 1.4x it gave the thin CPU network.
    "gpu": dict(channels=(128, 256, 512), depths=(2, 2, 2), mid_depth=1, latent_dim=512, likelihood="gaussian_rgb",
                decoder_norm="none"),
    # The course's reference size: 3-9 GB of GPU memory at batch 32 in bf16.
    "base": dict(channels=(128, 256, 512), depths=(2, 2, 2), mid_depth=1, latent_dim=512),
    # Deeper, with the largest latent the course reports working.
    "large": dict(channels=(128, 256, 512), depths=(3, 3, 3), mid_depth=2, latent_dim=2048),
}


class VAEOutput(NamedTuple):
    mu: torch.Tensor  # [B, latent] posterior mean
    logvar: torch.Tensor | None  # [B, latent] posterior log-variance; None for the deterministic autoencoder
    z: torch.Tensor  # [B, latent] sample (or mu when sample_posterior=False)
    x_mean: torch.Tensor  # [B, 3, H, W] decoder mean, model units
    # The decoder's distribution parameters (see x_params): [B, 3, H, W] learned log-variance, a 0-dim
    # log-variance (fixed or shared sigma), the [3, 3] shared RGB covariance, the [B, 10K, H, W]
    # logistic-mixture parameters, the categorical's or the Bernoulli's logits.
    x_logvar: torch.Tensor

    @property
    def x_params(self) -> torch.Tensor:
        """What the decoder's likelihood scores beside x_mean (the same tensor as x_logvar)."""
        return self.x_logvar


def _blocks(channels: int, depth: int, cfg: VAEConfig, norm: bool = True) -> nn.Sequential:
    return nn.Sequential(
        *[ResNeXtBottleneck(channels, cfg.mid_ratio, cfg.se_ratio, cfg.layer_scale_init, norm) for _ in range(depth)]
    )


def _outside_autocast(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Run an output layer in its weights' dtype (float32) even under bf16 autocast.

    bf16 keeps ~3 significant digits: near |x| = 1 that is 0.004, half a grey level, too coarse for
    the decoder mean under a discretized likelihood, and too coarse for mu/logvar in the KL. These
    two layers are a tiny share of the compute.
    """
    with torch.autocast(h.device.type, enabled=False):
        return layer(h.to(layer.weight.dtype))


class Encoder(nn.Module):
    """x [B, C, H, W] in [-1, 1] -> (mu, logvar), each [B, latent_dim]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        widths = cfg.channels + cfg.channels[-1:]
        self.stem = nn.Conv2d(cfg.in_channels, cfg.channels[0], 3, padding=1)
        self.stages = nn.ModuleList(
            nn.Sequential(_blocks(widths[i], cfg.depths[i], cfg), DownBlock(widths[i], widths[i + 1]))
            for i in range(len(cfg.channels))
        )
        c = widths[-1]
        self.mid = _blocks(c, cfg.mid_depth, cfg)
        self.norm_out = nn.GroupNorm(num_groups(c), c, eps=1e-6)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(c, cfg.bottleneck_channels, 3, padding=1)
        if cfg.latent_channels:
            self.to_latent = PositionwiseLinear(cfg.bottleneck_channels, cfg.kind.latent_outputs(cfg.latent_channels),
                                                cfg.latent_resolution)
        else:
            flat = cfg.latent_resolution**2 * cfg.bottleneck_channels
            self.to_latent = nn.Linear(flat, cfg.kind.latent_outputs(cfg.latent_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu, logvar) of the posterior; logvar is None for the deterministic autoencoder (z = mu)."""
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        h = self.conv_out(self.act(self.norm_out(self.mid(h))))
        # spatial: [B, 2C, r, r] flattened channel by channel, so the mu channels are the first half as well
        latent = _outside_autocast(self.to_latent, h if self.cfg.latent_channels else h.flatten(1)).flatten(1)
        if self.cfg.point_latent:
            return latent, None
        mu, logvar = latent.chunk(2, dim=1)
        return mu, logvar.clamp(*self.cfg.enc_logvar_range)


class Decoder(nn.Module):
    """z [B, latent_dim] -> (x_mean, x_params), as its likelihood (`self.likelihood`, one of model.likelihoods)
    splits the output conv. The likelihood's running statistics are this module's buffers (decoder.shared_cov)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        widths = cfg.channels + cfg.channels[-1:]
        r, cb, c = cfg.latent_resolution, cfg.bottleneck_channels, widths[-1]
        self.from_latent = (PositionwiseLinear(cfg.latent_channels, cb, r) if cfg.latent_channels
                            else nn.Linear(cfg.latent_dim, r * r * cb))
        norm = cfg.decoder_norm == "group"
        self.conv_in = nn.Conv2d(cb, c, 3, padding=1)
        self.mid = _blocks(c, cfg.mid_depth, cfg, norm)
        # Mirror of the encoder, lowest resolution first.
        self.stages = nn.ModuleList(
            nn.Sequential(
                UpBlock(widths[i + 1], widths[i], cfg.last_upsample if i == 0 else "bilinear", norm),
                _blocks(widths[i], cfg.depths[i], cfg, norm),
            )
            for i in reversed(range(len(cfg.channels)))
        )
        c0 = cfg.channels[0]
        self.norm_out = nn.GroupNorm(num_groups(c0), c0, eps=1e-6) if norm else nn.Identity()
        self.act = nn.SiLU()
        self.likelihood = create_likelihood(cfg)
        self.conv_out = nn.Conv2d(c0, self.likelihood.out_channels, cfg.head_kernel_size,
                                  padding=cfg.head_kernel_size // 2)
        for name, value in self.likelihood.running_stats().items():
            self.register_buffer(name, value)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        r = cfg.latent_resolution
        codes = z.view(z.shape[0], cfg.latent_channels, r, r) if cfg.latent_channels else z
        h = self.from_latent(codes).view(z.shape[0], cfg.bottleneck_channels, r, r)
        h = self.mid(self.conv_in(h))
        for stage in self.stages:
            h = stage(h)
        out = _outside_autocast(self.conv_out, self.act(self.norm_out(h)))
        return self.likelihood.head(out, self)


class EncoderDecoder(nn.Module):
    """The encoder, the decoder and the pass through them: what the reconstruction step trains, for every kind."""

    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        self.cfg = encoder.cfg
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(z)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): given (the trainer's noise keyed by image), or drawn here (pass a
        generator on mu's device for seeded draws)."""
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator, eps) if sample_posterior and logvar is not None else mu
        x_mean, x_params = self.decode(z)
        # The decoder's mode, not this module's: a view made by `VAE.autoencoder` follows the model's train/eval.
        if self.decoder.training:  # e.g. sigma-VAE: the batch's closed-form optimal sigma, folded into the running one
            x_params = self.decoder.likelihood.batch_params(x, x_mean, x_params, self.decoder)
        return VAEOutput(mu, logvar, z, x_mean, x_params)


class VAE(EncoderDecoder):
    """The model of any kind (`cfg.kind`): the encoder and decoder, and the modules the kind adds (the AAE's
    discriminator)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__(Encoder(cfg), Decoder(cfg))
        extras = cfg.kind.extra_modules(cfg)
        for name, module in extras.items():
            self.add_module(name, module)
        self.extra_names = tuple(extras)

    def autoencoder(self) -> EncoderDecoder:
        """The encoder and decoder alone, sharing this model's modules: what the trainer's reconstruction step
        (and its DDP wrapper) trains; a kind's extra modules are trained by the kind's own phases."""
        return EncoderDecoder(self.encoder, self.decoder) if self.extra_names else self

    @torch.no_grad()
    def encode_means(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 [N,3,H,W] on any device -> the posterior means (the codes) [N, d] on the model's device."""
        device = next(self.parameters()).device
        return torch.cat([self.encoder(to_model_range(part.to(device)))[0] for part in images.split(batch_size)])

    @torch.no_grad()
    def sample(
        self, num: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decoder means for prior draws z = temperature * eps (the course's temperature sampling)."""
        p = next(self.parameters())
        eps = torch.randn((num, self.cfg.latent_dim), generator=generator, device=p.device, dtype=p.dtype)
        return self.decode(temperature * eps)[0]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@torch.no_grad()
def recentre_codes(state: dict[str, torch.Tensor], shift: torch.Tensor) -> None:
    """Move a VAE's codes by -shift without changing what any code decodes to, in place on a state dict (a
    module's own, whose tensors are its parameters, or a copy such as the EMA weights'): mu' = mu - shift from
    the encoder's output bias, and the decoder's first layer gets W shift added to its bias, so dec'(mu') =
    dec(mu). Reconstructions are unchanged; with shift = the codes' mean over the data, the KL to N(0, I) drops
    by |shift|^2 / 2 nats per image, so an optimum of the ELBO has its codes centred (the trainer applies it,
    `--recentre-images`)."""
    bias = state["decoder.from_latent.bias"]
    weight = state["decoder.from_latent.weight"]
    shift = shift.to(bias)
    state["encoder.to_latent.bias"][:shift.numel()] -= shift  # the mu half (the first outputs)
    # dense: [r*r*Cb, latent] @ [latent]; spatial (layers.PositionwiseLinear): [Cb, C] @ [C, r*r], every position
    bias += (weight @ shift.view(weight.shape[1], -1)).flatten()


def create_vae(preset: str = "base", **overrides) -> VAE:
    """Build a VAE from a preset name ("tiny", "base", "large") with VAEConfig field overrides."""
    return VAE(VAEConfig.from_preset(preset, **overrides))
