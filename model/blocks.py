"""Blocks of the encoder/decoder: the residual ResNeXt bottleneck and the DC-AE down/up blocks.

Every block is an nn.Module that can be built and run on its own (see tests/test_model.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvNormAct, LayerScale, SqueezeExcite, num_groups


class ResNeXtBottleneck(nn.Module):
    """x + LayerScale(SE(branch(x))), branch = 1x1 reduce -> 3x3 grouped -> 1x1 expand (ConvNormActs).

    The 3x3 conv uses `num_groups(mid)` groups: 32 groups, or fewer so that every group keeps at
    least 4 channels (see layers.num_groups). The expand conv has no activation so the branch can
    add negative values to the residual stream. Channels in == channels out (identity shortcut);
    channel changes happen only in DownBlock/UpBlock.
    """

    def __init__(
        self,
        channels: int,
        mid_ratio: float = 0.5,
        se_ratio: float = 0.25,
        layer_scale_init: float = 1e-2,
        norm: bool = True,
    ):
        super().__init__()
        mid = max(4, int(round(channels * mid_ratio)))
        self.reduce = ConvNormAct(channels, mid, kernel_size=1, norm=norm)
        self.conv = ConvNormAct(mid, mid, kernel_size=3, groups=num_groups(mid), norm=norm)
        self.expand = ConvNormAct(mid, channels, kernel_size=1, act=False, norm=norm)
        self.se = SqueezeExcite(channels, rd_ratio=se_ratio)
        self.ls = LayerScale(channels, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(self.conv(self.reduce(x)))
        return x + self.ls(self.se(h))


def space_to_channel_shortcut(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """DC-AE non-parametric down shortcut: pixel_unshuffle(2) then average groups of channels.

    [B, C, H, W] -> pixel_unshuffle -> [B, 4C, H/2, W/2] -> mean over consecutive groups of
    4C/out_channels channels -> [B, out_channels, H/2, W/2]. With out_channels == C this is 2x2
    average pooling; with out_channels == 4C it is a pure space-to-channel reshape.
    """
    b, c, h, w = x.shape
    if (4 * c) % out_channels != 0:
        raise ValueError(
            f"DC-AE down shortcut needs 4*in_channels divisible by out_channels, "
            f"got in={c} (4*in={4 * c}), out={out_channels}"
        )
    x = F.pixel_unshuffle(x, 2)
    return x.reshape(b, out_channels, (4 * c) // out_channels, h // 2, w // 2).mean(dim=2)


def channel_to_space_shortcut(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """DC-AE non-parametric up shortcut: duplicate channels, then pixel_shuffle(2).

    [B, C, H, W] -> repeat each channel 4*out_channels/C times (consecutively) -> [B, 4*out, H, W]
    -> pixel_shuffle -> [B, out_channels, 2H, 2W]. With out_channels == C this is nearest-neighbour
    upsampling; with C == 4*out_channels it is a pure channel-to-space reshape.
    """
    c = x.shape[1]
    if (4 * out_channels) % c != 0:
        raise ValueError(
            f"DC-AE up shortcut needs 4*out_channels divisible by in_channels, "
            f"got in={c}, out={out_channels} (4*out={4 * out_channels})"
        )
    x = x.repeat_interleave((4 * out_channels) // c, dim=1)
    return F.pixel_shuffle(x, 2)


class DownBlock(nn.Module):
    """Halve H and W: GroupNorm -> SiLU -> 3x3 stride-2 conv, plus the DC-AE space-to-channel shortcut.

    The branch is pre-activated because the residual stream itself is never normalised.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if (4 * in_channels) % out_channels != 0:
            raise ValueError(
                f"DownBlock: 4*in_channels ({4 * in_channels}) must be divisible by out_channels "
                f"({out_channels}) for the DC-AE channel-averaging shortcut"
            )
        self.out_channels = out_channels
        self.norm = nn.GroupNorm(num_groups(in_channels), in_channels, eps=1e-6)
        self.act = nn.SiLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x))) + space_to_channel_shortcut(x, self.out_channels)


class UpBlock(nn.Module):
    """Double H and W: GroupNorm -> SiLU -> bilinear x2 -> 3x3 conv, plus the DC-AE channel-to-space shortcut.

    Norm and activation run before the upsample, at the low resolution, where they are 4x cheaper.
    norm=False: no GroupNorm (the norm-free decoder). mode="pixel_shuffle": the branch is a 1x1 conv at the low resolution to 4*out channels, then
    pixel_shuffle(2) (a learned 2x2 transposed conv): 9x fewer multiply-adds than the 3x3 conv at the high
    resolution, which is what dominates the CPU cost of the last (full-resolution) upsample.
    """

    MODES = ("bilinear", "pixel_shuffle")

    def __init__(self, in_channels: int, out_channels: int, mode: str = "bilinear", norm: bool = True):
        super().__init__()
        if (4 * out_channels) % in_channels != 0:
            raise ValueError(
                f"UpBlock: 4*out_channels ({4 * out_channels}) must be divisible by in_channels "
                f"({in_channels}) for the DC-AE channel-duplication shortcut"
            )
        if mode not in self.MODES:
            raise ValueError(f"UpBlock mode must be one of {self.MODES}, got {mode!r}")
        self.out_channels = out_channels
        self.mode = mode
        self.norm = nn.GroupNorm(num_groups(in_channels), in_channels, eps=1e-6) if norm else nn.Identity()
        self.act = nn.SiLU()
        if mode == "bilinear":
            self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        else:
            self.conv = nn.Conv2d(in_channels, 4 * out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm(x))
        if self.mode == "bilinear":
            h = self.conv(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
        else:
            h = F.pixel_shuffle(self.conv(h), 2)
        return h + channel_to_space_shortcut(x, self.out_channels)
