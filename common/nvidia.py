"""The NVIDIA GPUs `nvidia-smi` lists, and the PyTorch and DALI builds their driver runs.

Imports nothing outside the standard library: `scripts/setup.sh` runs it with the system Python before any
package is installed (`python3 common/nvidia.py` prints the choice), and `common.device` refuses to train on
the CPU when it lists a GPU that torch cannot use.

PyTorch's default wheel is built for CUDA 13, which needs a driver of the R580 series or newer; on older
drivers (R525-R575) PyTorch's CUDA 12.6 build from its own wheel index runs, and DALI has a CUDA 12 build.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass

CUDA13_DRIVER = 580  # the oldest driver series CUDA 13 runs on
CUDA12_INDEX = "https://download.pytorch.org/whl/cu126"


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str  # e.g. "535.183.01"

    @property
    def driver_series(self) -> int:
        return int(self.driver.split(".")[0])


@dataclass(frozen=True)
class Builds:
    """What to install: torch from PyTorch's default index (None) or from `torch_index`, and a DALI extra."""

    torch_index: str | None
    dali_extra: str  # pyproject.toml's optional dependency holding the matching nvidia-dali package
    reason: str


def listed_gpus() -> list[Gpu]:
    """The GPUs `nvidia-smi` lists; none when it is missing or fails (no driver loaded)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    gpus = []
    for line in result.stdout.splitlines():
        name, _, driver = line.rpartition(",")
        if name.strip() and driver.strip()[:1].isdigit():
            gpus.append(Gpu(name.strip(), driver.strip()))
    return gpus


def builds_for(gpus: list[Gpu]) -> Builds:
    """The PyTorch and DALI builds for the first listed GPU's driver (every GPU of a machine shares the driver)."""
    if not gpus:
        return Builds(None, "dali-cuda130", "no NVIDIA GPU listed: PyTorch's default build (runs on the CPU)")
    gpu = gpus[0]
    if gpu.driver_series >= CUDA13_DRIVER:
        return Builds(None, "dali-cuda130", f"driver {gpu.driver} (R{gpu.driver_series}) runs CUDA 13: PyTorch's "
                                            f"default build")
    return Builds(CUDA12_INDEX, "dali-cuda120", f"driver {gpu.driver} (R{gpu.driver_series}) is older than "
                                                f"R{CUDA13_DRIVER}, which CUDA 13 needs: PyTorch's CUDA 12.6 build")


def main() -> int:
    """Print `<torch index URL or 'default'> <DALI extra>` for scripts/setup.sh, and the reason on stderr."""
    builds = builds_for(listed_gpus())
    print(f"{builds.torch_index or 'default'} {builds.dali_extra}")
    print(f"setup: {builds.reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
