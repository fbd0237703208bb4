"""The DALI loader: `fn.readers.webdataset` over the shards and their `.idx` files, decode on the GPU.

One pipeline definition for both devices, `device` switching where the work runs: on CUDA, JPEG members decode
with nvJPEG (`device="mixed"`) and raw members go to the GPU whole; without a GPU the same graph runs CPU-only
(`device_id=None`, `device="cpu"` decoding). Pixels stay HWC (a channels_last batch, see `nchw`); a raw
member's label bytes are dropped in the one copy out of DALI's buffer. Labels are sliced out of the member bytes at the format's fixed
offset and checked against the manifest; keys come from each sample's source info
(`<shard>:<offset>:<key>.<encoding>`, from the index), a key per member whatever the labels.

How an epoch is cut, following DALI's own sharding so that the reader streams whole shards:

- A fresh pipeline is built per epoch, its file list in the order `epoch_order` gives the shards for
  (seed, epoch) (stored order in evaluation) and its shuffle seeded by (seed, epoch): the same seed gives the
  same order, every epoch a different one, and `set_epoch` can jump to any epoch.
- DALI gives rank r (`shard_id`, of `num_shards = world_size`) the contiguous samples
  [N*r // world_size, N*(r+1) // world_size) of that file list: disjoint, sizes differing by at most one.
  `pad_last_batch=True` repeats the last sample to fill the last batch; positions past the rank's sample
  count are masked, so evaluation visits every sample exactly once.
- Every rank yields `len(loader)` batches, the same number on every rank (`batches_per_rank`): with
  drop_last that is floor(N / (world_size*B)), never more than the smallest rank's full batches; otherwise
  ceil(N / (world_size*B)), and a rank whose DALI shard is one sample short of needing that many batches runs
  one more, fully masked.

Resume (`start_batch=k`) fast-forwards: the pipeline runs k batches that are not returned (DALI's shuffle is
a stateful reader; on a GPU these decodes take milliseconds).
"""
from __future__ import annotations

import numpy as np
import torch

from loaders.contract import Batch, Loader, LoaderError, epoch_order, nchw, to_device
from loaders.shards import check_labels
from shard_builder import format as fmt
from shard_builder.read import MANIFEST, Split

SHUFFLE_BUFFER = 1000  # samples in DALI's reader shuffle buffer (`initial_fill`)


class DaliLoader(Loader):
    def __init__(self, split: Split, batch_size: int, device: torch.device, rank: int, world_size: int,
                 seed: int, shuffle: bool, drop_last: bool, num_threads: int) -> None:
        super().__init__(split, batch_size, device, rank, world_size, seed, shuffle, drop_last)
        self.num_threads = max(1, num_threads)
        self.gpu = self.device.type == "cuda"
        self.device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if self.gpu else None
        count = len(split)
        # DALI's shard bounds (its reader's `start_index`): rank r reads samples [N*r//S, N*(r+1)//S).
        self.rank_samples = count * (rank + 1) // world_size - count * rank // world_size
        self.row_of_key = {key.encode(): row for row, key in enumerate(split.keys.tolist())}

    def define_pipeline(self, epoch: int):
        """The epoch's pipeline graph, not yet built (DALI checks every operator's arguments here)."""
        from nvidia.dali import fn, pipeline_def, types

        split, encoding = self.split, self.split.encoding
        order = epoch_order(len(split.shards), self.seed, epoch, self.shuffle)
        paths = [str(split.shards[i]) for i in order]
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                      seed=seed, prefetch_queue_depth=2, exec_dynamic=True)
        def pipeline():
            data = fn.readers.webdataset(
                paths=paths, index_paths=[p[:-len(".tar")] + ".idx" for p in paths], ext=[encoding],
                shard_id=self.rank, num_shards=self.world_size, random_shuffle=self.shuffle,
                initial_fill=min(SHUFFLE_BUFFER, max(1, self.rank_samples)), seed=seed,
                pad_last_batch=True, name="reader")
            offset = fmt.LABEL_OFFSET[encoding]
            labels = data[offset:offset + fmt.LABEL_BYTES]
            # `<shard>:<offset>:<key>.<encoding>`, zero-padded to one length so the batch is one dense array.
            source = fn.pad(fn.get_property(data, key="source_info"), fill_value=0)
            if encoding == "raw":
                # Whole members: the label bytes are dropped in the one copy out of DALI's buffer (`_images`);
                # slicing here would cost a copy per sample (2x slower in a CPU pipeline, measured).
                images = data.gpu() if self.gpu else data
            else:
                images = fn.decoders.image(data, device="mixed" if self.gpu else "cpu", output_type=types.RGB)
            return images, labels, source

        return pipeline()

    def _pipeline(self, epoch: int):
        pipe = self.define_pipeline(epoch)
        pipe.build()
        size = pipe.reader_meta("reader")["epoch_size"]
        if size != len(self.split):
            raise LoaderError(f"{self.split.path}: DALI's reader finds {size} samples in the indexes, the manifest "
                              f"lists {len(self.split)}")
        return pipe

    def __iter__(self):
        try:
            pipe = self._pipeline(self.epoch)
        except RuntimeError as err:
            raise LoaderError(f"{self.split.path}: DALI cannot read the shards: {err}") from None
        batch_size = self.batch_size
        # On CUDA the outputs are bound to the consumer's stream: no host sync, and the dynamic executor keeps
        # each output buffer alive, stream-ordered, for as long as it is referenced.
        stream = torch.cuda.current_stream(self.device) if self.gpu else None
        try:
            for index in range(self.num_batches):
                try:
                    images_out, labels_out, source_out = pipe.run(stream)
                except RuntimeError as err:  # a decode error deep in DALI: name the split, keep DALI's text
                    raise LoaderError(f"{self.split.path}: DALI failed reading a shard: {err}") from None
                if index < self.start_batch:
                    continue
                rows = self._rows(np.array(source_out.as_tensor()))
                check_labels(self.split, rows, np.array(labels_out.as_tensor()))
                mask = np.arange(index * batch_size, (index + 1) * batch_size) < self.rank_samples
                yield Batch(self._images(images_out, stream), to_device(self.split.attributes[rows], self.device),
                            to_device(self.split.identities[rows], self.device), self.split.keys[rows].tolist(),
                            to_device(mask, self.device))
        finally:
            del pipe

    def _images(self, images_out, stream) -> torch.Tensor:
        """DALI's output (raw: whole members; jpg: decoded HWC) -> dense uint8 HWC pixels, viewed by `nchw`.

        Our copy out of DALI's buffer (which DALI reuses) also drops a raw member's label bytes. On the CPU it
        is numpy's row-wise memcpy on one thread: torch's OpenMP copy contends with DALI's threads for the
        cores (10x slower on 2 cores, measured).
        """
        from nvidia.dali.plugin.pytorch import feed_ndarray

        batch_size, raw = self.batch_size, self.split.encoding == "raw"
        hwc_shape = (batch_size, fmt.IMAGE_SIZE, fmt.IMAGE_SIZE, fmt.CHANNELS)
        if not self.gpu:
            array = np.asarray(images_out.as_tensor())  # a view of DALI's buffer
            return nchw(fmt.split_raw_members(array)[1] if raw else np.ascontiguousarray(array))
        buffer = torch.empty((batch_size, fmt.RAW_MEMBER_BYTES) if raw else hwc_shape, dtype=torch.uint8,
                             device=self.device)
        # An asynchronous copy on the consumer's stream, ordered after DALI's work (as DALI's own iterator does).
        feed_ndarray(images_out.as_tensor(), buffer, cuda_stream=stream)
        return nchw(fmt.split_raw_members(buffer)[1] if raw else buffer)

    def _rows(self, source_info: np.ndarray) -> np.ndarray:
        """[B, L] zero-padded `<shard>:<offset>:<key>.<encoding>` strings -> manifest rows."""
        texts = np.ascontiguousarray(source_info).view(f"S{source_info.shape[1]}")[:, 0]  # numpy drops the padding
        keys = [text.rsplit(b":", 1)[-1].rsplit(b".", 1)[0] for text in texts.tolist()]
        rows = [self.row_of_key.get(key) for key in keys]
        if None in rows:
            i = rows.index(None)
            raise LoaderError(f"{texts[i].decode()}: member {keys[i].decode()!r} is not in "
                              f"{self.split.path / MANIFEST}")
        return np.array(rows, dtype=np.int64)
