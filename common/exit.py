"""Leaving a process that ran on torch.distributed (a rank of `torchrun` / `accelerate launch`)."""
from __future__ import annotations

import gc
import sys
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    """sys.exit(code) after collecting the garbage cycles the run left (the DDP module, its process group and the
    group's store client). Left to the interpreter's finalization, gloo's objects are destroyed while it shuts
    down and abort the rank ("terminate called without an active exception") about one exit in 15 on a 2-rank CPU
    run, after all its work was written; collected here first: none in 56."""
    gc.collect()
    sys.exit(code)
