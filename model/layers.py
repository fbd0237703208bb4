"""Small layers the blocks are built from: ConvNormAct, SqueezeExcite, LayerScale, PositionwiseLinear.

Every layer keeps the spatial size (stride 1) unless told otherwise and works on NCHW tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def num_groups(channels: int, max_groups: int = 32, min_group_width: int = 4) -> int:
    """Group count used both for GroupNorm and for the grouped 3x3 conv.

    Rule (the course's "32 groups, or 4 channels per group"): the largest divisor of `channels` that is
    at most `max_groups` and leaves at least `min_group_width` channels per group. So 128 channels ->
    32 groups of 4, 512 -> 32 groups of 16, 64 -> 16 groups of 4, 32 -> 8 groups of 4. Channel counts
    below `min_group_width` fall back to a single group.
    """
    if channels <= 0:
        raise ValueError(f"channels must be positive, got {channels}")
    upper = max(1, min(max_groups, channels // min_group_width))
    for g in range(upper, 0, -1):
        if channels % g == 0:
            return g
    return 1  # unreachable: g=1 always divides


class ConvNormAct(nn.Sequential):
    """Conv2d -> GroupNorm -> SiLU (Stable-Diffusion style). `act=False` leaves the SiLU out.

    The conv has no bias because GroupNorm's affine shift follows it. `norm=False` (the norm-free decoder,
    VAEConfig.decoder_norm="none") puts an Identity in the norm's place and gives the conv a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        norm: bool = True,
    ):
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=not norm,
        )
        norm = nn.GroupNorm(num_groups(out_channels), out_channels, eps=1e-6) if norm else nn.Identity()
        super().__init__(conv, norm, nn.SiLU() if act else nn.Identity())


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): x * sigmoid(MLP(global_avg_pool(x))) per channel.

    The pooled vector only gates channels; it never replaces the spatial features (this is not the
    global-average-pool bottleneck the course warns about).
    """

    def __init__(self, channels: int, rd_ratio: float = 0.25, min_rd_channels: int = 8):
        super().__init__()
        rd = max(min_rd_channels, int(round(channels * rd_ratio)))
        self.fc1 = nn.Conv2d(channels, rd, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(rd, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.fc2(self.act(self.fc1(s)))
        return x * torch.sigmoid(s)


class LayerScale(nn.Module):
    """Per-channel learnable scale (Touvron et al. 2021, CaiT) for NCHW tensors.

    A small init makes every residual block start close to the identity, which keeps the deep
    encoder/decoder stable in the first steps without normalising the residual stream.
    """

    def __init__(self, channels: int, init_value: float = 1e-2):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PositionwiseLinear(nn.Module):
    """A 1x1 conv with a bias for every channel and position: [B, in, r, r] -> [B, out, r, r].

    The spatial latent's layer to and from the codes. A plain conv shares its bias over the positions; here, as in
    the dense latent's Linear, every output component has its own, so moving the codes by any vector is an exact
    reparametrisation (model.vae.recentre_codes) and z = 0 can decode to the average face.
    """

    def __init__(self, in_channels: int, out_channels: int, resolution: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        # flat [out * r * r], channel by channel, like every bias: one dimension, so the optimizer leaves it undecayed
        self.bias = nn.Parameter(torch.zeros(out_channels * resolution * resolution))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's and nn.Conv2d's default

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oi,bihw->bohw", self.weight, h) + self.bias.view(-1, *h.shape[2:])
