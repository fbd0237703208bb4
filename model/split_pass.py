"""One pass over a split: per-image sums of the evaluation metrics' quantities, reduced exactly over ranks.

Used by the trainer (validation at every epoch end), `python -m eval` and `bonus_1.py`: one code path, so
their numbers agree (it sits in `model/` because the trainer, a stage before eval, validates with it). Sums
(not means) are reduced, and padding repeats are masked out, so 1 rank and N ranks give the same totals and
no sample counts twice.

Posterior noise is keyed by image, not by batch: image `key` draws eps_0, eps_1, ... from a counter-based
hash of (seed, key), made on the device (`model.noise`). So the result depends on the seed and the number of z
samples only, not on the batch size, the loader, the order, the number of ranks or the device, and eps_0 is the
same draw for the ELBO, the importance-weighted bound at any K, and the trainer's validation.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from model.likelihoods import discretized_gaussian_nll, gaussian_nll
from model.metrics import (NUM_DIMS, active_units, bits_per_dim, harmonic_metric, kl_diag_gaussian_per_dim, psnr_db,
                           to_model_range, to_uint8)
from model.noise import image_seeds, keyed_normal
from model.vae import VAE

SumReducer = Callable[[torch.Tensor], torch.Tensor]

ACTIVE_THRESHOLD = 0.01  # a component is active when Var_x[mu_j] exceeds this
# Residual histograms for fitting one global decoder sigma (fixed-sigma models): bins of 1e-4 model units
# (0.013 grey levels) up to 4 model units (twice the data range); residuals beyond land in the last bin.
RESIDUAL_RANGE = 4.0
RESIDUAL_BINS = 40_000


def posterior_noise(keys: Sequence[str], seed: int, samples: int, latent_dim: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """eps [samples, B, latent_dim] float32 on `device`; row j of image `key` is its j-th draw (`model.noise`),
    the same whatever `samples` is."""
    return keyed_normal(image_seeds(keys, seed, device), samples, latent_dim)


def residual_histograms(images: torch.Tensor, x_mean: torch.Tensor, weight: torch.Tensor,
                        bins: int = RESIDUAL_BINS, span: float = RESIDUAL_RANGE) -> torch.Tensor:
    """[2, bins] weighted counts of what a fixed-sigma discretized NLL depends on, per sub-pixel.

    Row 0, interior grey levels 1..254: |mean - bin centre| (the bin mass depends on nothing else, and is
    symmetric in the sign). Row 1, the open edge bins: the signed distance of the mean past the bin's inner
    edge, mirrored for level 255 so both edges share one row (level 0 with mean m = level 255 with -m).
    `eval.sigma_fit` evaluates the shared discretized NLL on these rows' bin centres for any sigma.
    """
    k = images.to(x_mean.device).float()
    mean = x_mean.float()
    interior = (mean - (k - 127.5) / 127.5).abs()
    edge = torch.where(k == 0, mean + 127.0 / 127.5, 127.0 / 127.5 - mean)  # inner edges -127/127.5, 127/127.5
    is_edge = (k == 0) | (k == 255)
    width = span / bins
    interior_bin = (interior / width).long().clamp(0, bins - 1)
    edge_bin = ((edge + span) / (2 * width)).long().clamp(0, bins - 1)  # the edge row spans [-span, span]
    w = weight.to(mean.device, torch.float64).view(-1, *[1] * (mean.ndim - 1)).expand_as(mean)
    row0 = torch.bincount(interior_bin[~is_edge], weights=w[~is_edge], minlength=bins)
    row1 = torch.bincount(edge_bin[is_edge], weights=w[is_edge], minlength=bins)
    return torch.stack([row0, row1])


@torch.no_grad()
def split_sums(vae: VAE, batches, reduce_sum: SumReducer, *, seed: int = 0, samples: int = 1, iw_samples: int = 0,
               reconstructions: bool = False, fixed_logvar: float | None = None,
               residuals: bool = False) -> dict[str, torch.Tensor]:
    """Accumulate over `batches` (loader `Batch`es) and reduce with `reduce_sum` (identity on one rank).

    Always: count, continuous Gaussian and discretized NLL (means over `samples` z draws per image), closed-form
    KL in total and per component, the first two moments of mu (active units).
    `iw_samples` K > 0: the importance-weighted bound  log p(x) >= logmeanexp_k [log p(x|z_k) + log p(z_k)
    - log q(z_k|x)] with the discretized decoder likelihood, log-sum-exp in float64, and the Monte-Carlo
    negative ELBO over the same K draws (the bound equals it at K=1 and is never looser, by Jensen).
    `reconstructions`: squared error of to_uint8(decoder mean at mu) in 0..255 units.
    `fixed_logvar`: the discretized NLL again with the decoder log-variance replaced by this constant.
    `residuals`: the histograms `residual_histograms` builds, for fitting one global sigma.
    """
    if samples < 1 or iw_samples < 0:
        raise ValueError(f"need samples >= 1 and iw_samples >= 0, got {samples}, {iw_samples}")
    device = next(vae.parameters()).device
    latent = vae.cfg.latent_dim
    likelihood = vae.decoder.likelihood
    draws = max(samples, iw_samples)
    names = totals_names(iw_samples, reconstructions, fixed_logvar)
    totals = torch.zeros(len(names), dtype=torch.float64, device=device)
    kl_per_dim = torch.zeros(latent, dtype=torch.float64, device=device)
    mu_sum = torch.zeros(latent, dtype=torch.float64, device=device)
    mu_outer = torch.zeros(latent, latent, dtype=torch.float64, device=device)  # second moments: covariance
    histograms = torch.zeros(2, RESIDUAL_BINS, dtype=torch.float64, device=device) if residuals else None
    for batch in batches:
        images = likelihood.observed(batch.images.to(device))  # binarised for a Bernoulli decoder
        weight = batch.mask.to(device, torch.float64)
        x = to_model_range(images)
        mu, logvar = vae.encode(x)
        if logvar is None and iw_samples:
            raise ValueError("a deterministic autoencoder has no posterior to importance-sample")
        eps = posterior_noise(batch.keys, seed, draws, latent, device).to(mu.dtype)
        std = torch.zeros_like(mu) if logvar is None else torch.exp(0.5 * logvar)  # z = mu for the autoencoder
        per_image = {name: torch.zeros_like(weight) for name in names}
        log_w = torch.empty(len(weight), iw_samples, dtype=torch.float64, device=device)
        for j in range(draws):  # one decoder pass per draw keeps memory at one batch
            z = mu + std * eps[j]
            x_mean, x_params = vae.decode(z)
            nll = likelihood.nll(images, x_mean, x_params)
            discretized = nll.discretized.double()
            if j < samples:
                per_image["gaussian_nll"] += nll.train.double() / samples
                per_image["discretized_nll"] += discretized / samples
                if fixed_logvar is not None:
                    fixed = torch.tensor(fixed_logvar, device=device)
                    per_image["fixed_sigma_nll"] += discretized_gaussian_nll(images, x_mean, fixed).double() / samples
                if histograms is not None:
                    histograms += residual_histograms(images, x_mean, weight)
            if j < iw_samples:
                log_prior = -gaussian_nll(z, torch.zeros_like(z), torch.zeros(()))
                log_posterior = -gaussian_nll(z, mu, logvar)
                log_w[:, j] = -discretized + (log_prior - log_posterior).double()
        if iw_samples:
            per_image["iw_nll"] = math.log(iw_samples) - torch.logsumexp(log_w, dim=1)
            per_image["mc_neg_elbo"] = -log_w.mean(dim=1)
        if reconstructions:
            recon = to_uint8(vae.decode(mu)[0]).float()
            per_image["squared_error"] = (recon - images.float()).square().flatten(1).mean(1).double()
        kl = (torch.zeros_like(mu, dtype=torch.float64) if logvar is None
              else kl_diag_gaussian_per_dim(mu, logvar).double())
        per_image["count"] = torch.ones_like(weight)
        per_image["kl"] = kl.sum(1)
        totals += torch.stack([per_image[name] for name in names]) @ weight
        kl_per_dim += weight @ kl
        mu64 = mu.double()
        mu_sum += weight @ mu64
        mu_outer += (mu64 * weight[:, None]).T @ mu64
    sums = {"totals": reduce_sum(totals), "kl_per_dim": reduce_sum(kl_per_dim), "mu_sum": reduce_sum(mu_sum),
            "mu_outer": reduce_sum(mu_outer)}
    if histograms is not None:
        sums["residuals"] = reduce_sum(histograms)
    sums["names"] = names
    sums["samples"], sums["iw_samples"], sums["seed"] = samples, iw_samples, seed
    return sums


def totals_names(iw_samples: int, reconstructions: bool, fixed_logvar: float | None) -> list[str]:
    names = ["count", "gaussian_nll", "discretized_nll", "kl"]
    names += ["iw_nll", "mc_neg_elbo"] if iw_samples else []
    names += ["squared_error"] if reconstructions else []
    names += ["fixed_sigma_nll"] if fixed_logvar is not None else []
    return names


def mu_covariance(sums: dict) -> torch.Tensor:
    """Cov_x[mu] over the split, [d, d] float64 (population covariance, from the reduced first two moments): the
    aggregate posterior's spread, which the prior N(0, I) asks to be the identity."""
    count = float(sums["totals"][0])
    mean = sums["mu_sum"] / count
    return sums["mu_outer"] / count - torch.outer(mean, mean)


def mu_variance(sums: dict) -> torch.Tensor:
    """Var_x[mu_j] over the split, [d] float64."""
    return mu_covariance(sums).diagonal().clamp_min(0.0)


def prior_match(sums: dict) -> dict[str, float]:
    """How far the posterior means of the split sit from the prior N(0, I): the root-mean-square of their mean,
    the covariance's eigenvalue range, and |Cov - I|_F / sqrt(d) (0 when the codes are spread like the prior;
    the posterior variance itself is left out, so a VAE is judged on where its means sit, an AE/AAE whole)."""
    covariance = mu_covariance(sums)
    eigenvalues = torch.linalg.eigvalsh(covariance)
    d = covariance.shape[0]
    mean = sums["mu_sum"] / float(sums["totals"][0])
    identity = torch.eye(d, dtype=covariance.dtype, device=covariance.device)
    return {"mean_rms": float(mean.square().mean().sqrt()), "cov_eigenvalue_min": float(eigenvalues[0]),
            "cov_eigenvalue_max": float(eigenvalues[-1]),
            "cov_distance_to_identity": float(torch.linalg.matrix_norm(covariance - identity) / math.sqrt(d))}


def summarize(sums: dict, latent_dim: int, num_dims: int = NUM_DIMS) -> dict[str, float]:
    """Sums -> per-image means in nats, bits/dim, harmonic metric, active units (scalars only; JSON-ready).

    bpd is the negative ELBO in bits per sub-pixel (the upper bound); nll_bpd the reconstruction term alone.
    """
    totals = dict(zip(sums.get("names", ["count", "gaussian_nll", "discretized_nll", "kl"]),
                      (float(v) for v in sums["totals"])))
    count = totals.pop("count")
    if count == 0:
        raise ValueError("no samples were evaluated")
    mean = {name: value / count for name, value in totals.items()}
    harmonic = harmonic_metric(mean["discretized_nll"], mean["kl"], latent_dim=latent_dim, num_dims=num_dims)
    continuous = harmonic_metric(mean["gaussian_nll"], mean["kl"], latent_dim=latent_dim, num_dims=num_dims)
    per_pixel = harmonic_metric(mean["discretized_nll"], mean["kl"], latent_dim=latent_dim, num_dims=num_dims // 3)
    out = {
        "images": int(count),
        "gaussian_nll": mean["gaussian_nll"],
        "gaussian_nll_bpd": bits_per_dim(mean["gaussian_nll"], num_dims),
        "discretized_nll": mean["discretized_nll"],
        "nll_bpd": bits_per_dim(mean["discretized_nll"], num_dims),
        "kl": mean["kl"],
        "kl_bits_per_component": mean["kl"] / (latent_dim * math.log(2.0)),
        "neg_elbo": mean["discretized_nll"] + mean["kl"],
        "bpd": bits_per_dim(mean["discretized_nll"] + mean["kl"], num_dims),
        "harmonic_n": harmonic.n,
        "harmonic_k": harmonic.k,
        "harmonic": harmonic.h,
        # Other readings a course may use, not the project's: n from the continuous training
        # NLL (a density: can be negative, then H means nothing), and n per pixel (D / 3) instead of per sub-pixel.
        "harmonic_continuous_n": continuous.n,
        "harmonic_continuous": continuous.h,
        "harmonic_per_pixel_n": per_pixel.n,
        "harmonic_per_pixel": per_pixel.h,
        "active_units": active_units(mu_variance(sums).float(), ACTIVE_THRESHOLD),
    }
    if "iw_nll" in mean:
        out |= {"iw_nll": mean["iw_nll"], "iw_bpd": bits_per_dim(mean["iw_nll"], num_dims),
                "mc_neg_elbo": mean["mc_neg_elbo"], "mc_bpd": bits_per_dim(mean["mc_neg_elbo"], num_dims)}
    if "squared_error" in mean:
        mse = mean["squared_error"]
        out |= {"mse": mse, "psnr": psnr_db(mse) if mse > 0 else math.inf}
    if "fixed_sigma_nll" in mean:
        out |= {"fixed_sigma_nll": mean["fixed_sigma_nll"],
                "fixed_sigma_nll_bpd": bits_per_dim(mean["fixed_sigma_nll"], num_dims),
                "fixed_sigma_bpd": bits_per_dim(mean["fixed_sigma_nll"] + mean["kl"], num_dims)}
    return out
