"""Sample quality as numbers: Fréchet distances between sets of images in the judge classifier's feature space,
and how close low-temperature prior samples come to the average face.

No pretrained Inception network can be downloaded here, so the distance is not the FID of the literature: the
features are the project's own CelebA classifier's (`model.classifier`, its position-averaged last map), and
the numbers compare models scored with the same judge, not papers.
"""
from __future__ import annotations

import numpy as np
import torch

from loaders.shards import decode_members, open_checked, read_members
from model import VAE, psnr_db, to_model_range, to_uint8
from model.classifier import AttributeClassifier

TEMPERATURES = (0.2, 0.5, 1.0, 1.5)
MEAN_FACE_SAMPLES = 64  # prior samples at the lowest temperature compared with the mean image
READ_CHUNK = 4096  # members decoded at a time when averaging a split


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """|m_a - m_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between Gaussians fitted to two sets of rows, in float64.

    Tr((C_a C_b)^(1/2)) = Tr((S C_b S)^(1/2)) with S = C_a^(1/2): a symmetric PSD matrix, so both square roots
    come from eigen-decompositions (no complex parts, no scipy).
    """
    a, b = a.double(), b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def high_frequency_energy(uint8: torch.Tensor) -> float:
    """Mean square of the 3x3 Laplacian of each channel of uint8 images [N, 3, H, W] (grey levels^2): what blur
    removes first, so a reconstruction's share of its image's tells how much fine detail it keeps."""
    kernel = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]], dtype=torch.float64, device=uint8.device)
    x = uint8.double().flatten(0, 1)[:, None]
    return float(torch.nn.functional.conv2d(x, kernel.view(1, 1, 3, 3)).square().mean())


def split_mean_image(split_dir) -> torch.Tensor:
    """The mean of every image of a split, float64 [3, 64, 64] in 0..255, read in chunks."""
    split = open_checked(split_dir)
    total = torch.zeros(3, 64, 64, dtype=torch.float64)
    for start in range(0, len(split), READ_CHUNK):
        rows = np.arange(start, min(start + READ_CHUNK, len(split)))
        hwc = decode_members(split, rows, [data for _, data in read_members(split, rows)])
        total += torch.from_numpy(hwc).double().sum(0).permute(2, 0, 1)
    return total / len(split)


@torch.no_grad()
def sample_quality(vae: VAE, judge: AttributeClassifier, images: torch.Tensor, mean_image: torch.Tensor,
                   reference: torch.Tensor, seed: int, batch_size: int = 256) -> dict:
    """Fréchet distances (judge features) from `images` to their reconstructions at mu, to prior samples at each
    temperature, and to `reference` (other real images: the distance real data already has); the reconstructions'
    high-frequency energy as a share of the images' (1: as much fine detail); PSNR to `mean_image` of
    temperature-0.2 samples and of decode(0)."""
    device = next(vae.parameters()).device

    def batched(function, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([function(part.to(device)) for part in x.split(batch_size)])

    def features(uint8: torch.Tensor) -> torch.Tensor:
        return batched(lambda part: judge.pooled_features(to_model_range(part)), uint8).cpu()

    def reconstruct(part: torch.Tensor) -> torch.Tensor:
        return to_uint8(vae.decode(vae.encode(to_model_range(part))[0])[0])

    real, reconstructions = features(images), batched(reconstruct, images)
    result = {"images": len(images), "features": real.shape[1],
              "fd_reconstructions": frechet_distance(real, features(reconstructions)),
              "fd_real_reference": frechet_distance(real, features(reference)),
              "detail_kept_reconstructions": high_frequency_energy(reconstructions) / high_frequency_energy(images)}
    generator = torch.Generator(device).manual_seed(seed)
    for temperature in TEMPERATURES:
        samples = torch.cat([to_uint8(vae.sample(len(part), temperature, generator))
                             for part in torch.arange(len(images)).split(batch_size)])
        result[f"fd_samples_t{temperature:g}"] = frechet_distance(real, features(samples))
    mean = mean_image.to(device)
    cold = to_uint8(vae.sample(MEAN_FACE_SAMPLES, TEMPERATURES[0], generator)).double()
    zero = to_uint8(vae.decode(torch.zeros(1, vae.cfg.latent_dim, device=device))[0]).double()
    result["mean_face_psnr_t0.2"] = float(psnr_db((cold - mean).square().mean()))
    result["mean_face_psnr_decode_zero"] = float(psnr_db((zero - mean).square().mean()))
    return result
