"""The WebDataset loader: shards streamed sequentially by DataLoader workers, each running a `wds.DataPipeline`.

How one epoch is cut (all of it follows from seed, epoch, world size, batch size and worker count):

1. Shard order: a permutation of the split's shards seeded by (seed, epoch) in training (`epoch_order`),
   the stored order in evaluation. The sample stream is the shards' members in that order, each shard's
   members in their stored order (the builder already shuffled them within the split).
2. Ranks: the stream is cut to (drop_last) or padded to (otherwise; padding repeats the stream's start and
   is masked out) `len(loader) * world_size * batch_size` samples, then into `world_size` contiguous, equally
   long ranges: every rank gets the same number of batches, disjoint samples, and in evaluation every
   sample is visited exactly once across ranks. No rank ever waits for another (cf. the hangs of
   webdataset issues #188/#194/#225, caused by ranks with unequal shard or sample counts).
3. Workers: a rank's range is split among its DataLoader workers in whole batches (contiguous, the first
   workers taking one more batch when it does not divide). The DataLoader takes batches from its workers in
   turn, so batch i of the epoch is worker i % W's batch i // W, whatever the timing.
4. Each worker's pipeline: read its samples straight from the shards (seek to the manifest's offset, one
   sequential read per run of members, tar headers checked) -> in training a shuffle buffer seeded by
   (seed, epoch, rank, worker) -> drop what a resumed epoch already saw -> batch + decode (raw: one memcpy;
   jpg: PIL) + check the labels against the manifest -> [B,3,64,64] uint8 (channels_last, see `nchw`). The main process pins the batch
   and copies it to the device without blocking.

The workers are persistent (forking them costs a third of an epoch of the 7,792-image sample); they read
the epoch and start batch from a small shared-memory tensor that `__iter__` sets before each epoch starts.

Resume (`set_epoch(e, start_batch=k)`): worker w plays the part of worker (w + k) % W, so the DataLoader's
round-robin starts at the right worker; each worker still reads its samples through the same shuffle buffer
but drops the first ones before decoding (a cheap fast-forward: reads, no decodes).
"""
from __future__ import annotations

import random
from functools import partial

import numpy as np
import torch
import webdataset as wds

from loaders.contract import Batch, Loader, LoaderError, epoch_order, nchw, to_device
from loaders.shards import decode_members, read_members, rows_by_shard
from shard_builder.read import Split

SHUFFLE_BUFFER = 1000  # samples (~13 MB of raw members per worker)


class EpochStream(torch.utils.data.IterableDataset):
    """One rank's epochs; each DataLoader worker iterates its own part of one (see the module docstring)."""

    def __init__(self, split: Split, batch_size: int, num_batches: int, rank: int, world_size: int, seed: int,
                 shuffle: bool, shuffle_buffer: int = SHUFFLE_BUFFER) -> None:
        self.split, self.batch_size, self.num_batches = split, batch_size, num_batches
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.shuffle_buffer = shuffle_buffer
        self.shards = rows_by_shard(split)
        # (epoch, start_batch) in shared memory: the persistent workers read it when each epoch starts.
        self.position = torch.zeros(2, dtype=torch.int64).share_memory_()

    def rank_samples(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's manifest rows for the epoch, in stream order, and their mask (False = padding)."""
        order = epoch_order(len(self.shards), self.seed, epoch, self.shuffle)
        stream = np.concatenate([self.shards[i] for i in order])
        per_rank = self.num_batches * self.batch_size
        total = per_rank * self.world_size
        real = np.arange(total) < len(stream)
        stream = np.resize(stream, total)  # cuts (drop_last) or repeats the stream's start (padding)
        part = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        return stream[part], real[part]

    def worker_part(self, epoch: int, start_batch: int, worker: int, num_workers: int):
        """(logical worker, rows, mask, batches to skip) for DataLoader worker `worker` of `num_workers`."""
        logical = (worker + start_batch) % num_workers
        bounds = np.array_split(np.arange(self.num_batches), num_workers)[logical]
        rows, real = self.rank_samples(epoch)
        first, stop = (bounds[0], bounds[-1] + 1) if len(bounds) else (0, 0)
        samples = slice(first * self.batch_size, stop * self.batch_size)
        skip = len(range(logical, start_batch, num_workers))  # this worker's batches before start_batch
        return logical, rows[samples], real[samples], skip

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start_batch = self.position.tolist()
        logical, rows, real, skip = self.worker_part(epoch, start_batch, worker, num_workers)
        rng = random.Random(int(np.random.SeedSequence([self.seed, epoch, self.rank, logical]).generate_state(1)[0]))
        pipeline = wds.DataPipeline(
            partial(_samples, self.split, rows, real),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng) if self.shuffle else None,
            wds.slice(skip * self.batch_size, None),
            wds.batched(self.batch_size, collation_fn=partial(_collate, self.split), partial=False),
        )
        return iter(pipeline)


def _samples(split: Split, rows: np.ndarray, real: np.ndarray):
    """The pipeline's source: (row, real, member bytes) in stream order."""
    real = real.tolist()
    for i, (row, data) in enumerate(read_members(split, rows)):
        yield row, real[i], data


def _collate(split: Split, samples: list[tuple[int, bool, bytes]]):
    """Decode a batch. Images travel to the main process as a tensor (shared memory); the small arrays as
    numpy arrays inside the pickle, which saves a shared-memory segment and a file-descriptor hand-over each."""
    rows = np.array([sample[0] for sample in samples], dtype=np.int64)
    images = decode_members(split, rows, [sample[2] for sample in samples])
    return (nchw(images), split.attributes[rows], split.identities[rows].astype(np.int64),
            np.array([sample[1] for sample in samples]), split.keys[rows].tolist())


def _as_is(batch):
    return batch  # already collated by the pipeline; the default would turn the numpy arrays into tensors


class WebDatasetLoader(Loader):
    def __init__(self, split: Split, batch_size: int, device: torch.device, rank: int, world_size: int,
                 seed: int, shuffle: bool, drop_last: bool, num_workers: int) -> None:
        super().__init__(split, batch_size, device, rank, world_size, seed, shuffle, drop_last)
        self.stream = EpochStream(split, batch_size, self.num_batches, rank, world_size, seed, shuffle)
        self.loader = torch.utils.data.DataLoader(
            self.stream, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if num_workers else None,
            persistent_workers=num_workers > 0)

    def __iter__(self):
        self.stream.position[0], self.stream.position[1] = self.epoch, self.start_batch  # before iter(): workers see it
        device = self.device
        try:
            for images, attributes, identities, mask, keys in self.loader:
                # `images` is pinned on CUDA (pin_memory), so its copy overlaps with the GPU's work.
                yield Batch(to_device(images, device), to_device(attributes, device), to_device(identities, device),
                            keys, to_device(mask, device))
        except LoaderError as err:
            raise LoaderError(_worker_message(err)) from None


def _worker_message(err: LoaderError) -> str:
    """The DataLoader re-raises a worker's error with the worker's traceback in the message: keep the message."""
    text = str(err)
    marker = f"{LoaderError.__name__}: "
    return text.rsplit(marker, 1)[-1].strip() if "Traceback" in text else text

