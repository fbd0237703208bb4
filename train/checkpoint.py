"""Run checkpoints: where they live, how they are committed, and how a path given by a user resolves to a VAE.

A run's checkpoint folder `OUT/checkpoints/step-NNNNNNN/` holds the training weights (`model.safetensors`,
the VAE's own keys whatever the launch), the trainer state (`trainer.pt`: optimizer(s), position, logs, every
process's running sums) and `vae/`: the EMA weights folder (`model.io`), which is all eval and edit need. The
schedules follow the images seen and the noise is keyed by image, so there is no RNG state to keep, and a
checkpoint resumes on any number of processes, compiled or not, on any device. The first process writes it as
`*.partial` and renames it once every process has reached that point, so a crash mid-save never leaves one
that looks finished; on several nodes the run folder must be shared, or the other nodes have none.
"""
from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import torch

from common.folders import read_meta
from model.io import MODEL_JSON, MODEL_WEIGHTS, CheckpointError, load_vae_folder
from model.vae import VAE

VAE_FOLDER = "vae"


def resolve_vae_folder(path: Path | str) -> Path:
    """Accept a `vae/` folder, a run checkpoint folder (holding `vae/`), or a run folder (its latest)."""
    path = Path(path)
    # A run checkpoint holds `vae/` and also the trainer's model.safetensors (training weights, no model.json):
    # `vae/` comes first.
    if (path / VAE_FOLDER / MODEL_WEIGHTS).is_file():
        return path / VAE_FOLDER
    if (path / MODEL_WEIGHTS).is_file():
        return path
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest / VAE_FOLDER
    raise CheckpointError(f"{path}: no {MODEL_WEIGHTS} here, in {path / VAE_FOLDER}, or in {path / 'checkpoints'}")


def load_vae(path: Path | str, device: torch.device | str = "cpu") -> tuple[VAE, dict]:
    """The VAE of a `vae/` folder, a run checkpoint or a run folder: (vae in eval mode, metadata)."""
    return load_vae_folder(resolve_vae_folder(path), device)


def newest_run_checkpoint(root: Path) -> Path | None:
    """The most recently written VAE run checkpoint anywhere below `root` (e.g. `runs/`), or None. Autoencoder
    checkpoints (no KL) and those whose model.json cannot be read are passed over."""
    pattern = os.path.join(glob.escape(str(root)), "**", "checkpoints", "step-*", VAE_FOLDER, MODEL_WEIGHTS)
    found = [Path(weights).parent.parent for weights in glob.glob(pattern, recursive=True)]  # follows symlinks
    found = [step for step in found if not step.name.endswith(".partial") and _model_of(step / VAE_FOLDER) == "vae"]
    return max(found, key=lambda step: (step / VAE_FOLDER / MODEL_WEIGHTS).stat().st_mtime_ns, default=None)


def _model_of(folder: Path) -> str | None:
    try:
        return read_meta(folder, MODEL_WEIGHTS, MODEL_JSON, CheckpointError)["config"].get("model", "vae")
    except (CheckpointError, KeyError, AttributeError):
        return None


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(run: Path) -> list[Path]:
    folder = Path(run) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".partial"))


def latest_checkpoint(run: Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1] if found else None


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def commit_checkpoint(final: Path, keep: int) -> None:
    """Rename the finished `.partial` folder into place and prune the oldest beyond `keep`."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial_path(final), final)
    for old in list_checkpoints(final.parent.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
