"""Checkpoint I/O, the one place it lives (train writes, eval / bonus_1.py / edit read).

A run's checkpoint folder `OUT/checkpoints/step-NNNNNNN/` holds Accelerate's full training state (model,
optimizer, scheduler, RNG, EMA, trainer position) and `vae/`: the EMA weights in safetensors plus
`model.json` (the VAEConfig and where the data came from), which is all eval and edit need. Folders are
written as `*.partial` and renamed when complete, so a crash mid-save never leaves one that looks finished.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model import VAE, VAEConfig

MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
VAE_FOLDER = "vae"


class CheckpointError(RuntimeError):
    """A missing, incomplete or mismatched checkpoint; the message names the path."""


def save_vae(folder: Path, vae: VAE, meta: dict, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Weights (by default the module's own; pass e.g. EMA weights) + config and metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = state_dict if state_dict is not None else vae.state_dict()
    save_file({name: value.detach().cpu().contiguous() for name, value in weights.items()}, folder / MODEL_WEIGHTS)
    parameters = sum(value.numel() for value in vae.parameters())
    (folder / MODEL_JSON).write_text(json.dumps({"config": vae.cfg.to_dict(), "parameters": parameters, **meta},
                                                indent=2) + "\n")


def resolve_vae_folder(path: Path | str) -> Path:
    """Accept a `vae/` folder, a run checkpoint folder (holding `vae/`), or a run folder (its latest)."""
    path = Path(path)
    if (path / MODEL_WEIGHTS).is_file():
        return path
    if (path / VAE_FOLDER / MODEL_WEIGHTS).is_file():
        return path / VAE_FOLDER
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest / VAE_FOLDER
    raise CheckpointError(f"{path}: no {MODEL_WEIGHTS} here, in {path / VAE_FOLDER}, or in {path / 'checkpoints'}")


def load_weights(module: torch.nn.Module, weights: Path, meta_path: Path,
                 error: type[CheckpointError] = CheckpointError) -> None:
    """Load a safetensors file into `module`; a damaged file or a mismatch raises `error` naming the file."""
    try:
        module.load_state_dict(load_file(weights))
    except SafetensorError as err:  # a damaged or truncated file
        raise error(f"{weights}: not a readable safetensors file ({err})") from None
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise error(f"{weights}: weights do not match the architecture in {meta_path} ({first})") from None


def load_vae(path: Path | str, device: torch.device | str = "cpu") -> tuple[VAE, dict]:
    """Rebuild the VAE a checkpoint describes and load its weights; returns (vae in eval mode, metadata)."""
    folder = resolve_vae_folder(path)
    meta_path = folder / MODEL_JSON
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing; cannot tell which architecture {folder / MODEL_WEIGHTS} is")
    meta = json.loads(meta_path.read_text())
    try:
        vae = VAE(VAEConfig(**meta["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{meta_path}: not a VAE config this code understands ({err})") from None
    load_weights(vae, folder / MODEL_WEIGHTS, meta_path)
    return vae.to(device).eval(), meta


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
