"""`torchrun --nproc_per_node N -m loaders.probe --split shards/valid --out DIR`: a real multi-process check.

Each rank (rank and world size from Accelerate, as the trainer gets them) iterates one epoch of every
loader kind, all-reducing after every batch as a DDP step would (a rank with fewer batches than another
would hang here), and writes the keys it saw (padding excluded) to `DIR/<kind>-rank<r>.json`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch.distributed as dist

from common.exit import exit_process
from loaders import LOADER_KINDS, LoaderError, make_loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loaders.probe", description=__doc__)
    parser.add_argument("--split", type=Path, required=True, help="a split folder, e.g. shards/valid")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kinds", nargs="+", choices=LOADER_KINDS, default=list(LOADER_KINDS))
    parser.add_argument("--batch-size", type=int, default=7)
    parser.add_argument("--train", action="store_true", help="shuffle + drop_last instead of evaluation order")
    parser.add_argument("--epoch", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=1)
    args = parser.parse_args(argv)

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    rank, world = state.process_index, state.num_processes
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for kind in args.kinds:
            loader = make_loader(kind, args.split, args.batch_size, state.device, rank=rank, world_size=world,
                                 seed=0, shuffle=args.train, drop_last=args.train, num_workers=args.num_workers)
            loader.set_epoch(args.epoch)
            keys, batches = [], 0
            for batch in loader:
                keys += [key for key, real in zip(batch.keys, batch.mask.tolist()) if real]
                batches += 1
                if dist.is_initialized():
                    dist.all_reduce(batch.mask.sum().reshape(1))  # the collective a DDP step would run
            record = {"kind": kind, "rank": rank, "world_size": world, "len": len(loader), "batches": batches,
                      "keys": keys}
            (args.out / f"{kind}-rank{rank}.json").write_text(json.dumps(record))
        state.wait_for_everyone()
    except LoaderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:  # not a collective: a rank that failed leaves without waiting for the others
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_process(main())
