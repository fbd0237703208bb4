"""The folder convention both networks (the VAE and the attribute classifier) are saved in: a safetensors file of
weights beside a JSON file holding the config needed to rebuild the network and metadata. No pickles, so a
folder is safe to load from anyone."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.errors import UserError


def save_folder(folder: Path, weights_name: str, json_name: str, weights: dict[str, torch.Tensor],
                meta: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: value.detach().cpu().contiguous() for name, value in weights.items()}, folder / weights_name)
    (folder / json_name).write_text(json.dumps(meta, indent=2) + "\n")


def read_json(path: Path, error: type[UserError], missing: str) -> dict:
    """A JSON file; missing (`missing` says why it matters) or unreadable raises `error` naming the file."""
    if not path.is_file():
        raise error(f"{path}: missing; {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from None


def read_meta(folder: Path, weights_name: str, json_name: str, error: type[UserError]) -> dict:
    """The folder's JSON; missing or unreadable raises `error` naming the file."""
    return read_json(Path(folder) / json_name, error,
                     f"cannot tell which architecture {Path(folder) / weights_name} is")


def load_weights(module: torch.nn.Module, weights: Path, meta_path: Path, error: type[UserError]) -> None:
    """Load a safetensors file into `module`; a damaged file or a mismatch raises `error` naming the file."""
    try:
        module.load_state_dict(load_file(weights))
    except SafetensorError as err:  # a damaged or truncated file
        raise error(f"{weights}: not a readable safetensors file ({err})") from None
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise error(f"{weights}: weights do not match the architecture in {meta_path} ({first})") from None
