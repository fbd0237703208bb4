"""Where a command runs: the GPU when there is one, unless the user asks for the CPU."""
from __future__ import annotations

import torch


def default_device(cpu: bool = False) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
