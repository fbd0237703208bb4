"""Gaussian noise keyed by image, drawn on the device: the same draws for an image whatever the batch, the rank,
the number of ranks or the device.

An image's draws come from a 63-bit seed (`image_seed`: a hash of the run's seed, the image's key and, in
training, the epoch), hashed on the host once per image. On the device each draw is a counter-based hash of
(seed, stream, draw index, component) (SplitMix64's finaliser, Steele et al. 2014) turned into a normal by the
Box-Muller transform: no generator state, no per-image loop, and draw j is the same however many are taken.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# SplitMix64's increment and multipliers as int64 (tensor arithmetic wraps modulo 2^64).
_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
STREAM_STRIDE = 1 << 40  # draws of one stream per image: far more than samples x latent components
POSTERIOR, PRIOR = 0, 1  # the reparametrisation's eps; the adversarial autoencoder's prior draws


def image_seed(seed: int, key: str, epoch: int | None = None) -> int:
    """A 63-bit seed for one image's draws: stable across runs, processes and platforms (not `hash()`)."""
    text = f"{seed}/{key}" if epoch is None else f"{seed}/{key}/{epoch}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def image_seeds(keys: Sequence[str], seed: int, device: torch.device | str, epoch: int | None = None) -> torch.Tensor:
    """[B] int64 seeds on `device`, copied without waiting for the device's queued work."""
    return torch.tensor([image_seed(seed, key, epoch) for key in keys], dtype=torch.int64).to(device,
                                                                                               non_blocking=True)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """A logical (unsigned) right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def keyed_normal(seeds: torch.Tensor, samples: int, dim: int, stream: int = POSTERIOR) -> torch.Tensor:
    """Standard normals [samples, B, dim] float32 on the seeds' device; entry (j, i, k) depends only on
    (seeds[i], stream, j, k)."""
    counter = torch.arange(1, samples * dim + 1, device=seeds.device, dtype=torch.int64) + stream * STREAM_STRIDE
    bits = _mix(seeds.view(1, -1, 1) + (counter * _GOLDEN).view(samples, 1, dim))
    scale = 2.0**-32
    u1 = (_shift_right(bits, 32).double() + 1.0) * scale  # (0, 1]: the logarithm stays finite
    u2 = (bits & 0xFFFFFFFF).double() * scale
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).float()
