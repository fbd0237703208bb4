"""Where a command runs: the GPU when there is one, unless the user asks for the CPU."""
from __future__ import annotations

import torch

from common.errors import UserError
from common.nvidia import builds_for, listed_gpus


def default_device(cpu: bool = False) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def require_usable_gpu(allow_cpu: bool) -> None:
    """Stop when `nvidia-smi` lists a GPU but this torch build cannot use it (typically a CUDA 13 wheel under an
    older driver: torch only warns, and a run would quietly train on the CPU), unless the CPU is asked for."""
    if allow_cpu or torch.cuda.is_available():
        return
    gpus = listed_gpus()
    if not gpus:
        return
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    hint = builds_for(gpus).reason
    raise UserError(f"nvidia-smi lists GPU '{gpus[0].name}' (driver {gpus[0].driver}) but torch "
                    f"{torch.__version__} ({build}) sees no CUDA device; scripts/setup.sh installs the build this "
                    f"driver runs ({hint}), or pass --cpu to run on the CPU")
