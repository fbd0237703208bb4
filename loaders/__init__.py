"""Loaders: shards -> `Batch`es of uint8 [B,3,64,64] images on the training device, one contract for all.

```python
loader = make_loader("webdataset", "shards/train", 32, device, rank=rank, world_size=world, seed=0,
                     shuffle=True, drop_last=True)
for epoch in range(epochs):
    loader.set_epoch(epoch)            # set_epoch(epoch, start_batch=k) resumes mid-epoch
    for batch in loader:               # len(loader) batches, the same on every rank
        x = batch.images.float() / 127.5 - 1   # normalise on the device
```

- `webdataset`: DataLoader workers streaming the shards through a WebDataset pipeline (`loaders/wds.py`);
- `dali`: NVIDIA DALI's webdataset reader, nvJPEG decode on CUDA, a CPU-only pipeline elsewhere (`loaders/dali.py`);
- `resident`: the split decoded once into device memory, batches gathered on the device (`loaders/resident.py`).

A seed and an epoch fix the order; the ranks of a distributed run get disjoint, equally long parts; with
`drop_last=False` (evaluation) the last batches are padded with repeats that `Batch.mask` marks, so every
sample is visited exactly once. Unusable shards raise `LoaderError` naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from loaders.contract import Batch, Loader, LoaderError

LOADER_KINDS = ("webdataset", "dali", "resident")

__all__ = ["Batch", "LOADER_KINDS", "Loader", "LoaderError", "default_workers", "make_loader"]


def default_workers(world_size: int = 1) -> int:
    """CPU cores per rank of this node (torchrun and Accelerate set LOCAL_WORLD_SIZE)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def make_loader(kind: str, split_dir: Path | str, batch_size: int, device: torch.device | str, *, rank: int = 0,
                world_size: int = 1, seed: int = 0, shuffle: bool, drop_last: bool,
                num_workers: int | None = None) -> Loader:
    """A loader over one split folder (`OUT/train`). `num_workers`: DataLoader workers (webdataset), DALI
    threads (dali), decode threads for the one-time load (resident); default: the cores per local rank."""
    from loaders.shards import open_checked

    if kind not in LOADER_KINDS:
        raise ValueError(f"unknown loader {kind!r}; choose one of {', '.join(LOADER_KINDS)}")
    split = open_checked(split_dir)
    workers = default_workers(world_size) if num_workers is None else num_workers
    args = (split, batch_size, torch.device(device), rank, world_size, seed, shuffle, drop_last, workers)
    if kind == "webdataset":
        from loaders.wds import WebDatasetLoader
        return WebDatasetLoader(*args)
    if kind == "dali":
        from loaders.dali import DaliLoader
        return DaliLoader(*args)
    from loaders.resident import ResidentLoader
    return ResidentLoader(*args)
