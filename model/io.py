"""The VAE's weights folder: `model.safetensors` (weights) + `model.json` (the VAEConfig and metadata), all that
eval and edit need (`common.folders`). Run checkpoints, which hold such a folder, are `train.checkpoint`'s."""
from __future__ import annotations

from pathlib import Path

import torch

from common.errors import UserError
from common.folders import load_weights, read_meta, save_folder
from model.vae import VAE, VAEConfig

MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"


class CheckpointError(UserError):
    """A missing, incomplete or mismatched checkpoint; the message names the path."""


def save_vae(folder: Path, vae: VAE, meta: dict, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Weights (by default the module's own; pass e.g. EMA weights) + config, parameter count and metadata."""
    weights = state_dict if state_dict is not None else vae.state_dict()
    save_folder(folder, MODEL_WEIGHTS, MODEL_JSON, weights,
                {"config": vae.cfg.to_dict(), "parameters": vae.num_params(), **meta})


def load_vae_folder(folder: Path, device: torch.device | str = "cpu") -> tuple[VAE, dict]:
    """Rebuild the VAE a weights folder describes and load its weights; returns (vae in eval mode, metadata)."""
    meta = read_meta(folder, MODEL_WEIGHTS, MODEL_JSON, CheckpointError)
    try:
        vae = VAE(VAEConfig(**meta["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / MODEL_JSON}: not a VAE config this code understands ({err})") from None
    load_weights(vae, folder / MODEL_WEIGHTS, folder / MODEL_JSON, CheckpointError)
    return vae.to(device).eval(), meta
