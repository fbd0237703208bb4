"""A decoder likelihood added from outside the project (a discretized Laplace, defined here): registering its class
is all it takes to train, evaluate and score it; nothing in model/, train/, eval/ or bonus_1.py names it."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

import bonus_1
from eval.cli import main as eval_main
from model.likelihoods import LIKELIHOODS, Likelihood, NLLTerms, register
from model.metrics import sum_per_image
from model.vae import VAEConfig
from train.checkpoint import load_vae
from train.run import main as train_main


class DiscretizedLaplace(Likelihood):
    """A Laplace per sub-pixel with a learned location and log-scale (two heads), scored on the 256 bins with open
    edge bins; its training loss is the discretized NLL itself."""

    name = "laplace"

    @property
    def out_channels(self) -> int:
        return 2 * self.cfg.in_channels

    def head(self, out: torch.Tensor, decoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = out.chunk(2, dim=1)
        return mean, log_scale.clamp(-8.0, 2.0)

    def nll(self, x_uint8: torch.Tensor, x_mean: torch.Tensor, x_params: torch.Tensor) -> NLLTerms:
        k = x_uint8.to(x_mean.device).float()
        scale = x_params.float().exp()

        def cdf(edge: torch.Tensor) -> torch.Tensor:
            z = (edge - x_mean.float()) / scale
            return torch.where(z < 0, 0.5 * torch.exp(z.clamp_max(0)), 1 - 0.5 * torch.exp(-z.clamp_min(0)))

        upper = torch.where(k == 255, torch.ones_like(k), cdf((k - 127.0) / 127.5))
        lower = torch.where(k == 0, torch.zeros_like(k), cdf((k - 128.0) / 127.5))
        nll = sum_per_image(-(upper - lower).clamp_min(1e-30).log())
        return NLLTerms(nll, nll)

    def std(self, x_params: torch.Tensor, batch_size: int) -> torch.Tensor:
        return (math.sqrt(2.0) * x_params.float().exp()).flatten(1).mean(1)


@pytest.fixture
def laplace():
    register(DiscretizedLaplace)
    yield DiscretizedLaplace
    del LIKELIHOODS[DiscretizedLaplace.name]


def test_the_toy_laplace_masses_sum_to_one_and_match_torch_distributions(laplace):
    likelihood = laplace(VAEConfig(likelihood="laplace"))
    levels = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    mean, log_scale = torch.full((256, 1, 1, 1), 0.3), torch.full((256, 1, 1, 1), math.log(0.2))
    nll = likelihood.nll(levels, mean, log_scale).discretized.double()
    assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-5)
    reference = torch.distributions.Laplace(torch.tensor(0.3, dtype=torch.float64), 0.2)
    interior = torch.arange(1, 255, dtype=torch.float64)
    mass = reference.cdf((interior - 127) / 127.5) - reference.cdf((interior - 128) / 127.5)
    torch.testing.assert_close(nll[1:255], -mass.log(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_registered_likelihood_trains_evaluates_and_scores_through_bonus_1(laplace, synthetic_shards, tmp_path):
    run = tmp_path / "run"
    assert train_main(["--shards", str(synthetic_shards), "--out", str(run), "--preset", "tiny", "--likelihood",
                       "laplace", "--batch-size", "16", "--epochs", "1", "--max-steps", "3", "--compile", "off",
                       "--precision", "fp32", "--no-figures"]) == 0
    vae, _ = load_vae(run)
    assert isinstance(vae.decoder.likelihood, laplace) and vae.decoder.conv_out.out_channels == 6
    test_split = str(synthetic_shards / "test")
    assert eval_main(["--checkpoint", str(run), "--shards", test_split, "-K", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval-test.json").read_text())
    metrics = report["metrics"]
    assert report["likelihood"] == "laplace" and report["fixed_sigma"] is None
    assert 0 < metrics["discretized_nll"] == pytest.approx(metrics["gaussian_nll"])  # trained on the probability
    assert math.isfinite(metrics["iw_bpd"]) and metrics["iw_bpd"] <= metrics["mc_bpd"] + 1e-9
    bonus = tmp_path / "bonus"
    assert bonus_1.main(["--checkpoint", str(run), "--shards", test_split, "--out", str(bonus)]) == 0
    scored = json.loads((bonus / "bonus_1-test.json").read_text())
    assert scored["harmonic"] == report["harmonic"]  # the same pass: n, k and H exactly
