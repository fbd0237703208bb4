"""The one batch contract every loader honours, and the epoch plan that splits an epoch across ranks.

The trainer never knows which loader fed it: it receives `Batch`es of uint8 images already on its device
and normalises them there. Every loader gives the same guarantees: a (seed, epoch) pair fixes its order,
the ranks of a distributed run get disjoint, equally long parts (`batches_per_rank`; a rank that ran out of
batches before the others would hang the next collective), and padding repeats are masked so evaluation
visits every sample exactly once. The resident loader takes its order from `epoch_plan` (a permutation of
samples); the streaming loaders (webdataset, DALI) must read shards sequentially, so they permute shards
and cut the stream into contiguous rank ranges instead (see their modules): the same (seed, epoch) gives
each loader kind its own order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from shard_builder.read import BuildError, Split


class LoaderError(BuildError):
    """Unusable shards (missing, truncated, corrupt, another format than dataset.json says); names the file."""


def nchw(hwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Pixels as stored in the shards, [B, 64, 64, 3] HWC -> the contract's [B, 3, 64, 64] view, no copy.

    The view is a channels_last tensor: a host-side HWC -> CHW transpose was a quarter of the CPU loaders'
    per-batch time (measured), while convolutions take channels_last as it is (and prefer it on GPUs).
    """
    return (torch.from_numpy(hwc) if isinstance(hwc, np.ndarray) else hwc).permute(0, 3, 1, 2)


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, 64, 64] uint8, channels_last memory format (see `nchw`), on the training device
    attributes: torch.Tensor  # [B, 40] uint8 in {0,1}
    identities: torch.Tensor  # [B] int64
    keys: list[str]  # CelebA file stems
    mask: torch.Tensor  # [B] bool: False marks padding that repeats a sample (evaluation must skip it)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class EpochPlan:
    """Which samples (indices into the split's manifest) this rank visits, batch by batch."""

    indices: np.ndarray  # [num_batches, batch_size] int64
    mask: np.ndarray  # [num_batches, batch_size] bool, False = padding

    @property
    def num_batches(self) -> int:
        return len(self.indices)


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def epoch_plan(num_samples: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int,
               shuffle: bool, drop_last: bool) -> EpochPlan:
    """Split one epoch into `world_size` disjoint, equally long parts and cut this rank's part into batches.

    Training (`drop_last=True`): the permuted samples are cut to a multiple of `world_size * batch_size`,
    so every batch is full; the dropped tail changes every epoch with the permutation.
    Training (`drop_last=False`) or evaluation: the order is padded to a multiple of
    `world_size * batch_size` by repeating samples from its start, and the repeats are masked out, so every
    sample is visited exactly once across ranks and all batches have the same static shape.
    Rank r takes every `world_size`-th sample from r on, so the ranks' parts interleave in the order.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    order = epoch_order(num_samples, seed, epoch, shuffle)
    step = world_size * batch_size
    if drop_last:
        usable = num_samples // step * step
        if usable == 0:
            raise ValueError(f"{num_samples} samples cannot fill one batch of {batch_size} on each of "
                             f"{world_size} ranks; lower the batch size or use drop_last=False")
        order, real = order[:usable], np.ones(usable, dtype=bool)
    else:
        padded = -(-num_samples // step) * step
        repeats = np.resize(order, padded - num_samples) if padded > num_samples else order[:0]
        order = np.concatenate([order, repeats])
        real = np.arange(padded) < num_samples
    indices = order[rank::world_size].reshape(-1, batch_size)
    return EpochPlan(indices=indices.astype(np.int64), mask=real[rank::world_size].reshape(-1, batch_size))


def to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without waiting for the GPU's queued work: non_blocking (a pageable source is staged at
    once by CUDA, so it may be freed right after; a blocking copy would wait for the stream to drain)."""
    tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    return tensor.to(device, non_blocking=True)


def batches_per_rank(num_samples: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """The number of batches every rank gets in one epoch (what `epoch_plan` yields; equal on all ranks)."""
    step = world_size * batch_size
    if drop_last:
        if num_samples < step:
            raise ValueError(f"{num_samples} samples cannot fill one batch of {batch_size} on each of "
                             f"{world_size} ranks; lower the batch size or use drop_last=False")
        return num_samples // step
    return -(-num_samples // step)


class Loader:
    """What the trainer iterates: `set_epoch(epoch, start_batch)`, then `for batch in loader` (`Batch`es).

    `len(loader)` is the number of batches of a whole epoch on this rank, the same on every rank; after
    `set_epoch(e, start_batch=k)` an iteration yields the last `len(loader) - k` of them, exactly the batches
    an uninterrupted epoch `e` would have yielded from batch `k` on (mid-epoch resume). The state stays as
    set, so iterating twice without `set_epoch` repeats the epoch.
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device, rank: int, world_size: int,
                 seed: int, shuffle: bool, drop_last: bool) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.device = split, batch_size, torch.device(device)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_batches = batches_per_rank(len(split), batch_size, world_size, drop_last)
        self.epoch = self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} is outside the epoch's {self.num_batches} batches")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        raise NotImplementedError
