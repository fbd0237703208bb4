"""Latent maps (seeds 001-003): where the posterior means of a split sit, coloured by a CelebA attribute (the
two latent axes of a 2-D model, else the first two principal axes of mu), and for a 2-D model the decoded
manifold: a grid of z through the inverse normal CDF, so equal steps carry equal prior mass."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.plots import save_grid, save_scatter_by_label
from eval.core import EvalError
from loaders.shards import first_images
from model import VAE, to_uint8
from shard_builder.read import attribute_index, open_split

MANIFOLD_SIDE = 15  # decoded faces per side of the 2-D manifold grid


def map_coordinates(mu: torch.Tensor) -> tuple[np.ndarray, tuple[str, str]]:
    """[N, 2] plotting coordinates: the latent itself when it is 2-D, else its first two principal axes."""
    if mu.shape[1] == 2:
        return mu.numpy(), ("z1", "z2")
    centred = mu.double() - mu.double().mean(0)
    _, singular, vectors = torch.linalg.svd(centred, full_matrices=False)
    share = singular.square() / singular.square().sum()
    return (centred @ vectors[:2].T).numpy(), (f"PC 1 of mu ({share[0]:.0%} of the variance)",
                                              f"PC 2 of mu ({share[1]:.0%} of the variance)")


@torch.no_grad()
def save_latent_maps(folder: Path, vae: VAE, images: torch.Tensor, labels: np.ndarray, attribute: str,
                     split_name: str) -> list[Path]:
    """The scatter of mu coloured by `attribute` (labels in {0,1}, one per image), and the manifold for d = 2."""
    coordinates, axes = map_coordinates(vae.encode_means(images).cpu())
    written = [save_scatter_by_label(folder / f"latent_map-{split_name}.png", coordinates, labels.astype(bool),
                                     axes, (f"not {attribute}", attribute),
                                     f"posterior means of {len(images)} {split_name} images, coloured by {attribute}")]
    if vae.cfg.latent_dim == 2:
        side = MANIFOLD_SIDE
        quantiles = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(side) + 0.5) / side)
        z1, z2 = torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy")  # z2 grows upwards
        z = torch.stack([z1.flatten(), z2.flatten()], 1).to(next(vae.parameters()).device)
        decoded = to_uint8(vae.decode(z)[0]).cpu()
        written.append(save_grid(folder / "latent_manifold.png", decoded, rows=side,
                                 title=f"decoded manifold: z = inverse normal CDF of a {side}x{side} grid"))
    return written


def latent_maps_of_split(vae: VAE, split_dir: Path, attribute: str, limit: int, out: Path) -> list[Path]:
    """The latent maps of the first `limit` images of a split, coloured by `attribute` (a name of dataset.json's)."""
    split = open_split(split_dir)
    index = attribute_index(attribute, split.attribute_names, EvalError)
    images = first_images(split_dir, limit)
    return save_latent_maps(out, vae, images, split.attributes[:len(images), index], split.attribute_names[index],
                            split.name)
