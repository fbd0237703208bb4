"""The device-resident loader: the split decoded once into one uint8 tensor (HWC rows) on the device.

Each epoch, `epoch_plan`'s indices (one host-to-device copy per epoch) gather the batches on the device;
no CPU work per batch but the keys. This is the physical limit of data loading: the whole CelebA train
split is 162,770 x 12,288 B = 2.0 GB of uint8 (plus 7 MB of labels), a fraction of one GPU's memory.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from loaders.contract import Batch, Loader, epoch_plan, nchw, to_device
from loaders.shards import decode_members, read_members, rows_by_shard
from shard_builder import format as fmt
from shard_builder.read import Split


def decode_split(split: Split, threads: int = 1) -> np.ndarray:
    """Every member of the split, decoded: dense uint8 HWC [N,64,64,3], row i = manifest row i."""
    hwc = np.empty((len(split), fmt.IMAGE_SIZE, fmt.IMAGE_SIZE, fmt.CHANNELS), dtype=np.uint8)

    def decode_shard(rows: np.ndarray) -> None:
        for start in range(0, len(rows), 1024):
            chunk = rows[start:start + 1024]
            hwc[chunk] = decode_members(split, chunk, [data for _, data in read_members(split, chunk)])

    # PIL releases the GIL while it decodes, so threads help with JPEG shards.
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(decode_shard, rows_by_shard(split)))
    return hwc


class ResidentLoader(Loader):
    def __init__(self, split: Split, batch_size: int, device: torch.device, rank: int, world_size: int,
                 seed: int, shuffle: bool, drop_last: bool, num_threads: int = 1) -> None:
        super().__init__(split, batch_size, device, rank, world_size, seed, shuffle, drop_last)
        self.hwc = torch.from_numpy(decode_split(split, num_threads)).to(self.device)
        self.attributes = torch.from_numpy(split.attributes).to(self.device)
        self.identities = torch.from_numpy(split.identities.astype(np.int64)).to(self.device)

    def __iter__(self):
        plan = epoch_plan(len(self.split), self.batch_size, self.rank, self.world_size, self.seed, self.epoch,
                          self.shuffle, self.drop_last)
        indices, masks = plan.indices[self.start_batch:], plan.mask[self.start_batch:]
        device_indices, device_masks = to_device(indices, self.device), to_device(masks, self.device)
        tensors = (self.hwc, self.attributes, self.identities)
        for i, index in enumerate(device_indices):
            if self.device.type == "cpu":
                # numpy's gather runs on one thread; torch's OpenMP one stalls when another process holds a
                # core (25x slower on a busy 2-core machine, measured), as in DaliLoader._images.
                hwc, attributes, identities = (torch.from_numpy(t.numpy()[indices[i]]) for t in tensors)
            else:
                hwc, attributes, identities = (t.index_select(0, index) for t in tensors)
            yield Batch(nchw(hwc), attributes, identities, self.split.keys[indices[i]].tolist(), device_masks[i])
