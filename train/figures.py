"""The trainer's per-epoch figures: loss curves, reconstructions, interpolations and prior samples."""
from __future__ import annotations

from pathlib import Path

import torch

from common.plots import save_diagnostics, save_grid, save_loss_curves
from model import VAE, to_model_range, to_uint8

TEMPERATURES = (0.2, 0.5, 1.0, 1.5)  # prior sample rows


@torch.no_grad()
def write_figures(folder: Path, vae: VAE, images: torch.Tensor, epoch: int, steps_log: list[dict],
                  epochs_log: list[dict], seed: int) -> None:
    """Loss curves, reconstructions, interpolations on mu (z = a z1 + (1-a) z2) and prior samples per temperature."""
    tag = f"epoch{epoch:03d}"
    save_loss_curves(folder / "loss_curves.png", steps_log, epochs_log)
    save_diagnostics(folder / "diagnostics.png", steps_log, epochs_log, point_latent=vae.cfg.point_latent)
    images = vae.decoder.likelihood.observed(images)  # what the decoder models (binarised for a Bernoulli decoder)
    mu, _ = vae.encode(to_model_range(images[:8]))
    recon = to_uint8(vae.decode(mu)[0])
    save_grid(folder / f"reconstructions_{tag}.png", torch.cat([images[:8], recon]), rows=2,
              title=f"reconstructions (decoder mean at mu), epoch {epoch}", row_labels=["input", "recon"])
    mu1, _ = vae.encode(to_model_range(images[8:12]))
    mu2, _ = vae.encode(to_model_range(images[12:16]))
    alphas = torch.linspace(0, 1, 10, device=images.device)
    z = (alphas[None, :, None] * mu1[:, None] + (1 - alphas[None, :, None]) * mu2[:, None]).flatten(0, 1)
    save_grid(folder / f"interpolation_{tag}.png", to_uint8(vae.decode(z)[0]), rows=4,
              title="interpolation z = a*z1 + (1-a)*z2", col_labels=[f"a={a:.2f}" for a in alphas.tolist()])
    title = f"prior samples z = temp * eps, epoch {epoch}"
    if vae.cfg.model == "ae":  # the course's point: without a KL nothing ties the codes to N(0, I)
        title += " (an autoencoder: no KL, so these codes mean nothing)"
    save_samples(folder / f"samples_{tag}.png", vae, seed, title)


@torch.no_grad()
def save_samples(path: Path, vae: VAE, seed: int, title: str) -> None:
    """Prior samples, one row per temperature. The same seed for every temperature: each column is one eps
    drawn at growing temperature."""
    device = next(vae.parameters()).device
    samples = [vae.sample(10, t, torch.Generator(device).manual_seed(seed)) for t in TEMPERATURES]
    save_grid(path, to_uint8(torch.cat(samples)), rows=4, title=title,
              row_labels=[f"temp {t}" for t in TEMPERATURES])
