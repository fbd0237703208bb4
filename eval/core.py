"""Evaluate a checkpoint on one split: the code path `python -m eval` and `bonus_1.py` share.

    vae, meta = load_vae(checkpoint, device)
    report = evaluate(vae, "shards/test", device, EvalOptions(iw_samples=16), reduce_sum=...)

All math comes from `model` (likelihoods, KL, metrics) through `model.split_pass.split_sums`, the pass the trainer
validates with; this module picks the passes (an optional valid pass to fit one global sigma for a fixed-sigma
model, then the test pass), and turns the reduced sums into a JSON-ready report.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from common.errors import UserError
from eval.sigma_fit import fit_global_logvar, histogram_nll
from loaders import make_loader
from loaders.shards import first_images
from model import NUM_DIMS, VAE, bits_per_dim, harmonic_metric
from model.split_pass import ACTIVE_THRESHOLD, SumReducer, mu_variance, prior_match, split_sums, summarize
from shard_builder.read import DATASET_JSON

HARMONIC_FORMULA = "n = NLL/(D ln 2), k = KL/(d ln 2), H = 2nk/(n+k)"
CAVEAT = ("H goes to 0 as k goes to 0, so a collapsed posterior (every latent equal to the prior) scores best while "
          "reconstructing nothing: read H together with bits/dim and the number of active components.")


AUTOENCODER_NOTE = ("autoencoder with a point latent (deterministic AE or AAE): z = mu and no KL, so there is no "
                    "ELBO, bits/dim bound, importance-weighted bound or harmonic metric; its NLL is the decoder's at "
                    "z = mu; prior samples mean something only as far as prior_match shows the codes spread like "
                    "N(0, I) (the AAE's discriminator pulls them there, a plain AE's nothing does)")
# Metrics that need a posterior distribution and its KL; an autoencoder's report leaves them out.
NOT_FOR_AUTOENCODERS = ("kl", "kl_bits_per_component", "neg_elbo", "bpd", "harmonic_n", "harmonic_k", "harmonic",
                        "harmonic_continuous_n", "harmonic_continuous", "harmonic_per_pixel_n", "harmonic_per_pixel",
                        "fixed_sigma_bpd")


class EvalError(UserError):
    """Unusable input for evaluation (an empty split, a shards root instead of a split); names the path."""


@dataclass
class EvalOptions:
    loader: str = "resident"
    batch_size: int = 64
    seed: int = 0
    samples: int = 1  # z draws per image for the ELBO terms (reconstruction NLL), hence n, bits/dim and H
    iw_samples: int = 0  # K of the importance-weighted bound (0: skip it)
    reconstructions: bool = True  # MSE / PSNR of the decoder mean at mu
    fit_sigma: bool = True  # fixed-sigma models: also report bits/dim at one sigma fitted on the valid split
    valid_shards: str | None = None  # the split to fit sigma on; default: the evaluated split's sibling `valid`
    num_workers: int | None = None
    judge: str | None = None  # a classifier folder: also measure sample quality in its feature space (rank 0)
    color_by: str | None = None  # an attribute: also map the posterior means, coloured by it (rank 0)
    require_kl: bool = False  # refuse a deterministic autoencoder (bonus_1.py: H needs a KL)
    quality_images: int = 1000  # images of the split (and of the sibling valid split) the Fréchet distances use


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def check_split_dir(path: Path) -> None:
    """Catch the likely mistake of passing the shards root: `open_split` would only say it is not a split."""
    if (path / DATASET_JSON).is_file():
        raise EvalError(f"{path}: this is a shards root (it holds {DATASET_JSON}); pass a split folder such as "
                        f"{path / 'test'}")
    if not path.is_dir():
        raise EvalError(f"{path}: split folder does not exist")


def _loader(kind: str, split_dir: Path, options: EvalOptions, device, rank: int, world_size: int):
    loader = make_loader(kind, split_dir, options.batch_size, device, rank=rank, world_size=world_size,
                         seed=options.seed, shuffle=False, drop_last=False, num_workers=options.num_workers)
    if len(loader.split) == 0:
        raise EvalError(f"{split_dir}: the split holds no samples (empty shards)")
    loader.set_epoch(0)
    return loader


def evaluate(vae: VAE, split_dir: Path | str, device: torch.device | str, options: EvalOptions, *, rank: int = 0,
             world_size: int = 1, reduce_sum: SumReducer = _identity,
             log: Callable[[str], None] = lambda message: None, trained_on: dict | None = None) -> dict:
    """Every evaluation metric on the whole split; returns the report (a JSON-ready dict).

    `trained_on`: the dataset.json the checkpoint was trained on (its metadata), to warn about another crop.
    """
    split_dir = Path(split_dir)
    check_split_dir(split_dir)
    cfg = vae.cfg
    latent = cfg.latent_dim
    warnings: list[str] = []
    if cfg.point_latent:
        if options.require_kl:
            raise EvalError(f"the checkpoint is an autoencoder ({cfg.model}) with a point latent: it has no KL, so the "
                            f"harmonic metric (k = KL / (d ln 2)) does not apply; python -m eval reports its "
                            f"reconstruction numbers")
        warnings.append(AUTOENCODER_NOTE)
        options = replace(options, iw_samples=0)  # no posterior to importance-sample
    loader = _loader(options.loader, split_dir, options, device, rank, world_size)

    likelihood = vae.decoder.likelihood
    fixed = None
    if likelihood.fits_global_sigma and options.fit_sigma:
        fixed = _fit_sigma(vae, split_dir, options, device, rank, world_size, reduce_sum, warnings, log)

    log(f"evaluating {len(loader.split):,} images of {split_dir} ({options.samples} z sample(s) per image"
        + (f", importance-weighted bound with K={options.iw_samples}" if options.iw_samples else "") + ")")
    sums = split_sums(vae, loader, reduce_sum, seed=options.seed, samples=options.samples,
                      iw_samples=options.iw_samples, reconstructions=options.reconstructions,
                      fixed_logvar=None if fixed is None else fixed["logvar"])
    if float(sums["totals"][0]) == 0:
        raise EvalError(f"{split_dir}: no samples were evaluated")
    metrics = summarize(sums, latent)
    if cfg.point_latent:
        metrics = {key: value for key, value in metrics.items() if key not in NOT_FOR_AUTOENCODERS}
    if fixed is not None:
        fixed |= {"test_nll": metrics["fixed_sigma_nll"], "test_nll_bpd": metrics["fixed_sigma_nll_bpd"]}
        if "kl" in metrics:
            fitted = harmonic_metric(metrics["fixed_sigma_nll"], metrics["kl"], latent_dim=latent)
            fixed |= {"test_bpd": metrics["fixed_sigma_bpd"], "test_harmonic": fitted.h}
    variance = mu_variance(sums)
    if metrics["active_units"] < latent / 4:
        warnings.append(f"only {metrics['active_units']} of {latent} latent components are active "
                        f"(Var[mu] > {ACTIVE_THRESHOLD:g}), fewer than a quarter: the posterior has largely "
                        f"collapsed, and a low H means little here")
    warnings += _data_warnings(loader.split.dataset, trained_on)
    if likelihood.eval_note:
        warnings.append(likelihood.eval_note)
    # Rank 0's extras: the model kind's own numbers (the AAE's discriminator) and sample quality.
    kind_diagnostics = cfg.kind.diagnostics(vae, split_dir, options.quality_images, options.seed) if rank == 0 else {}
    quality = None
    if options.judge and rank == 0:
        log(f"sample quality in the feature space of {options.judge} ({options.quality_images} images)")
        quality = _sample_quality(vae, split_dir, first_images(split_dir, options.quality_images), options, device)
    return {
        "split": str(split_dir),
        "split_name": split_dir.name,
        "images": metrics["images"],
        "num_dims": NUM_DIMS,
        "latent_dim": latent,
        "likelihood": cfg.likelihood,
        "seed": options.seed,
        "z_samples": options.samples,
        "iw_samples": options.iw_samples,
        "options": asdict(options),
        "world_size": world_size,
        "device": str(device),
        "metrics": metrics,
        "units": {
            "nats": "per image (sum over the D = 12288 sub-pixels or the d latent components), mean over the split",
            "bpd": "bits per sub-pixel: nats / (D ln 2); `bpd` is the negative ELBO (discretized NLL + KL)",
            "discretized_nll": "probability mass of the 256-level bin under the decoder Gaussian, edge bins open",
            "mse": "per sub-pixel, 0..255 units, to_uint8(decoder mean at z = mu) vs the image; psnr = "
                   "10 log10(255^2 / mse) of the split's mean MSE",
            "iw_nll": "-logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)], z_k ~ q(z|x), discretized "
                      "decoder likelihood; mc_neg_elbo: minus the mean of the same K log-weights",
        },
        "harmonic": {"n": metrics["harmonic_n"], "k": metrics["harmonic_k"], "H": metrics["harmonic"],
                     "formula": HARMONIC_FORMULA, "caveat": CAVEAT} if "harmonic" in metrics else None,
        "active_threshold": ACTIVE_THRESHOLD,
        "prior_match": prior_match(sums),
        **kind_diagnostics,
        "per_component": {"kl": (sums["kl_per_dim"] / metrics["images"]).tolist(),
                          "mu_variance": variance.tolist()},
        "fixed_sigma": fixed,
        "sample_quality": quality,
        "warnings": warnings,
    }


def _sample_quality(vae: VAE, split_dir: Path, images: torch.Tensor, options: EvalOptions, device) -> dict:
    """`images`: the split's first `quality_images` images."""
    from eval.sample_quality import sample_quality, split_mean_image
    from model.classifier import load_classifier

    siblings = {name: split_dir.parent / name for name in ("train", "valid")}
    for name, path in siblings.items():
        if not path.is_dir():
            raise EvalError(f"{path}: --judge also needs the {name} split beside {split_dir} (the mean face comes "
                            f"from train, the real-vs-real reference distance from valid)")
    judge, _ = load_classifier(options.judge, device)
    reference = first_images(siblings["valid"], options.quality_images)
    return {"judge": options.judge, **sample_quality(vae, judge, images, split_mean_image(siblings["train"]),
                                                      reference, options.seed, options.batch_size)}


def _fit_sigma(vae, split_dir, options, device, rank, world_size, reduce_sum, warnings, log) -> dict | None:
    valid_dir = Path(options.valid_shards) if options.valid_shards else split_dir.parent / "valid"
    if not valid_dir.is_dir():
        if options.valid_shards:
            raise EvalError(f"{valid_dir}: valid split folder (to fit the global sigma on) does not exist")
        warnings.append(f"fixed-sigma model but no valid split at {valid_dir}: the global-sigma fit is skipped "
                        f"(pass --valid-shards)")
        return None
    check_split_dir(valid_dir)
    if valid_dir.resolve() == split_dir.resolve():
        warnings.append("the global sigma was fitted on the evaluated split itself")
    log(f"fitting one global decoder sigma on {valid_dir} (fixed-sigma model)")
    valid = _loader(options.loader, valid_dir, options, device, rank, world_size)
    sums = split_sums(vae, valid, reduce_sum, seed=options.seed, samples=options.samples, residuals=True)
    logvar, nll = fit_global_logvar(sums["residuals"])
    model_nll = histogram_nll(sums["residuals"], vae.cfg.fixed_logvar) * NUM_DIMS
    sigma = math.exp(0.5 * logvar)
    return {
        "fitted_on": str(valid_dir),
        "logvar": logvar,
        "sigma": sigma,
        "sigma_grey_levels": sigma * 127.5,
        "model_logvar": vae.cfg.fixed_logvar,
        "model_sigma_grey_levels": math.exp(0.5 * vae.cfg.fixed_logvar) * 127.5,
        "valid_nll_bpd": bits_per_dim(nll),  # from the residual histograms (0.013-grey-level bins)
        "valid_nll_bpd_at_model_sigma": bits_per_dim(model_nll),
    }


def _data_warnings(dataset: dict, trained_on: dict | None) -> list[str]:
    found = []
    if dataset.get("encoding") == "jpg":
        found.append("these shards are JPEG-encoded: likelihoods are measured on JPEG-decoded pixels, not on the "
                     "original images (build raw shards for exact likelihoods)")
    for field in ("crop", "resample"):
        if trained_on and field in trained_on and trained_on[field] != dataset.get(field):
            found.append(f"the checkpoint was trained on shards with {field} {trained_on[field]}, these have "
                         f"{dataset.get(field)}: the numbers are not comparable with its training metrics")
    return found
