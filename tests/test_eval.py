"""Evaluation and bonus_1.py: known answers, IW bound, rank / batch / loader invariance, same numbers, clear errors."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bonus_1
from eval.cli import main as eval_main
from eval.core import EvalOptions, evaluate
from eval.sigma_fit import histogram_nll
from loaders import make_loader
from model import create_vae, harmonic_metric
from model.io import save_vae
from train.checkpoint import list_checkpoints, load_vae
from model.split_pass import posterior_noise, split_sums, summarize

REPO = Path(__file__).resolve().parents[1]
D = 3 * 64 * 64


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-init VAEs saved with `save_vae`: learned variance, fixed sigma, and a collapsed encoder."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    learned = create_vae("tiny")
    save_vae(root / "learned", learned, {"step": 0})
    torch.manual_seed(1)
    save_vae(root / "fixed", create_vae("tiny", likelihood="gaussian_fixed"), {"step": 0})
    collapsed = create_vae("tiny")
    collapsed.load_state_dict(learned.state_dict())
    with torch.no_grad():  # mu no longer depends on x: no component is active
        collapsed.encoder.to_latent.weight[:128].zero_()
    save_vae(root / "collapsed", collapsed, {"step": 0})
    return {"learned": root / "learned", "fixed": root / "fixed", "collapsed": root / "collapsed"}


def add_sums(*parts: dict) -> dict:
    """Sum the outputs of several `split_sums` calls (e.g. one per simulated rank, each with an identity reducer)."""
    out = dict(parts[0])
    for part in parts[1:]:
        for name, value in part.items():
            if isinstance(value, torch.Tensor):
                out[name] = out[name] + value
    return out


def _evaluate(checkpoint: Path, split: Path, **options) -> dict:
    vae, _ = load_vae(checkpoint)
    return evaluate(vae, split, "cpu", EvalOptions(**options))


# ----------------------------------------------------------------------------- an independent computation


def _discretized_nll64(x_uint8: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Bin masses from the float64 normal CDF: [x - 1/2, x + 1/2] grey levels, edge bins open, upper tail reflected."""
    x = x_uint8.double()
    sigma = torch.exp(0.5 * logvar.double()).expand_as(mean)
    a = ((x - 0.5) / 127.5 - 1.0 - mean.double()) / sigma
    b = ((x + 0.5) / 127.5 - 1.0 - mean.double()) / sigma
    cdf = torch.special.ndtr
    interior = torch.where(a + b > 0, cdf(-a) - cdf(-b), cdf(b) - cdf(a))
    mass = torch.where(x == 0, cdf(b), torch.where(x == 255, cdf(-a), interior))
    return -torch.log(mass).sum()


def _log_normal64(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    return (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 / torch.exp(logvar))).sum()


@torch.no_grad()
def _independent(checkpoint: Path, split: Path, seed: int, iw_samples: int) -> dict[str, float]:
    """Per image, one at a time, in float64: the totals eval must reproduce (same z draws: the noise convention)."""
    vae, _ = load_vae(checkpoint)
    loader = make_loader("resident", split, 1, "cpu", shuffle=False, drop_last=False)
    loader.set_epoch(0)
    sums = dict.fromkeys(("discretized", "gaussian", "kl", "iw", "squared_error"), 0.0)
    count = 0
    for batch in loader:
        image, key = batch.images, batch.keys
        x = image.double() / 127.5 - 1.0
        mu, logvar = vae.encode(image.float() / 127.5 - 1.0)
        eps = posterior_noise(key, seed, max(1, iw_samples), vae.cfg.latent_dim)
        log_w = []
        for j in range(max(1, iw_samples)):
            z = mu + torch.exp(0.5 * logvar) * eps[j]
            mean, x_logvar = vae.decode(z)
            nll = _discretized_nll64(image, mean, x_logvar)
            if j == 0:
                sums["discretized"] += float(nll)
                var = torch.exp(x_logvar.double())
                sums["gaussian"] += float(0.5 * (math.log(2 * math.pi) + x_logvar.double() + (x - mean.double()) ** 2
                                                 / var).expand_as(x).sum())
            zeros = torch.zeros_like(z)
            log_w.append(-nll + _log_normal64(z, zeros, zeros) - _log_normal64(z, mu, logvar))
        sums["iw"] -= float(torch.logsumexp(torch.stack(log_w), 0) - math.log(len(log_w)))
        sums["kl"] += float(0.5 * (torch.exp(logvar.double()) + mu.double() ** 2 - 1 - logvar.double()).sum())
        recon = ((vae.decode(mu)[0].double() + 1) * 127.5).round().clamp(0, 255)
        sums["squared_error"] += float(((recon - image.double()) ** 2).mean())
        count += 1
    return {name: value / count for name, value in sums.items()} | {"images": count}


@pytest.mark.slow
def test_eval_totals_match_an_independent_per_image_computation(checkpoints, synthetic_shards):
    split = synthetic_shards / "test"
    report = _evaluate(checkpoints["learned"], split, seed=3, iw_samples=3, batch_size=8)
    m = report["metrics"]
    ref = _independent(checkpoints["learned"], split, seed=3, iw_samples=3)
    assert m["images"] == ref["images"] == json.loads((synthetic_shards / "dataset.json").read_text())["counts"]["test"]
    assert m["discretized_nll"] == pytest.approx(ref["discretized"], rel=1e-5)
    assert m["gaussian_nll"] == pytest.approx(ref["gaussian"], rel=1e-5)
    assert m["kl"] == pytest.approx(ref["kl"], rel=1e-5)
    assert m["iw_nll"] == pytest.approx(ref["iw"], rel=1e-5)
    assert m["mse"] == pytest.approx(ref["squared_error"], rel=1e-4)
    assert m["psnr"] == pytest.approx(10 * math.log10(255**2 / ref["squared_error"]), rel=1e-4)
    # bits/dim conversion and the harmonic metric, from the per-image means by hand
    ln2 = math.log(2)
    assert m["nll_bpd"] == pytest.approx(ref["discretized"] / (D * ln2), rel=1e-5)
    assert m["bpd"] == pytest.approx((ref["discretized"] + ref["kl"]) / (D * ln2), rel=1e-5)
    assert m["iw_bpd"] == pytest.approx(ref["iw"] / (D * ln2), rel=1e-5)
    n, k = ref["discretized"] / (D * ln2), ref["kl"] / (128 * ln2)
    assert (m["harmonic_n"], m["harmonic_k"]) == pytest.approx((n, k), rel=1e-5)
    assert m["harmonic"] == pytest.approx(2 * n * k / (n + k), rel=1e-5)
    assert sum(report["per_component"]["kl"]) == pytest.approx(m["kl"], rel=1e-9)


def test_harmonic_metric_and_bits_per_dim_on_hand_computed_values():
    ln2 = math.log(2)
    assert harmonic_metric(2 * D * ln2, 0.5 * 128 * ln2, latent_dim=128) == pytest.approx((2.0, 0.5, 0.8))
    assert harmonic_metric(3 * D * ln2, 3 * 512 * ln2, latent_dim=512).h == pytest.approx(3.0)  # n = k -> H = n
    assert harmonic_metric(5 * D * ln2, 0.0, latent_dim=64).h == 0.0  # collapsed posterior: H = 0 (the caveat)
    sums = {"totals": torch.tensor([4.0, 8.0, 4 * 2 * D * ln2, 4 * 0.5 * 128 * ln2], dtype=torch.float64),
            "kl_per_dim": torch.zeros(128, dtype=torch.float64), "mu_sum": torch.zeros(128, dtype=torch.float64),
            "mu_outer": torch.eye(128, dtype=torch.float64)}
    summary = summarize(sums, 128)
    assert summary["nll_bpd"] == pytest.approx(2.0) and summary["gaussian_nll"] == pytest.approx(2.0)
    assert summary["bpd"] == pytest.approx(2.0 + 0.5 * 128 / D)
    assert summary["harmonic"] == pytest.approx(0.8) and summary["active_units"] == 128  # Var = 1/4 - 0 > 0.01


@pytest.mark.slow
def test_importance_weighted_bound_equals_the_elbo_at_k1_and_is_tighter_beyond(checkpoints, synthetic_shards):
    split = synthetic_shards / "test"
    one = _evaluate(checkpoints["learned"], split, iw_samples=1, reconstructions=False)["metrics"]
    eight = _evaluate(checkpoints["learned"], split, iw_samples=8, reconstructions=False)["metrics"]
    # K=1: the bound is the one-sample ELBO (same draw z_0, Monte-Carlo KL) ...
    assert one["iw_nll"] == one["mc_neg_elbo"]
    # ... whose KL term agrees with the closed form up to Monte-Carlo noise.
    assert one["iw_nll"] == pytest.approx(one["neg_elbo"], abs=0.5 + 0.1 * one["kl"])
    # K=8: never looser than the ELBO on the same draws (Jensen), and tighter than the closed-form ELBO.
    assert eight["iw_nll"] <= eight["mc_neg_elbo"]
    assert eight["iw_nll"] < eight["neg_elbo"] and eight["iw_nll"] < one["iw_nll"]
    # z_0 is the same draw whatever K: the ELBO terms do not move.
    assert eight["discretized_nll"] == one["discretized_nll"] and eight["kl"] == one["kl"]


def _scalars(report: dict) -> dict[str, float]:
    return {k: v for k, v in report["metrics"].items()} | {
        "kl_per_component": report["per_component"]["kl"], "mu_variance": report["per_component"]["mu_variance"]}


def _assert_same(a: dict, b: dict, rel: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=rel, abs=1e-9), name


@pytest.mark.slow
def test_batch_size_and_loader_do_not_change_the_result(checkpoints, synthetic_shards):
    split = synthetic_shards / "test"
    reference = _scalars(_evaluate(checkpoints["learned"], split, iw_samples=2, batch_size=64))
    _assert_same(_scalars(_evaluate(checkpoints["learned"], split, iw_samples=2, batch_size=3)), reference)
    _assert_same(_scalars(_evaluate(checkpoints["learned"], split, iw_samples=2, batch_size=5,
                                    loader="webdataset", num_workers=1)), reference)
    other_seed = _evaluate(checkpoints["learned"], split, iw_samples=2, seed=1)["metrics"]
    assert other_seed["discretized_nll"] != reference["discretized_nll"]  # the seed does matter


@pytest.mark.slow
def test_dali_loader_gives_the_same_numbers(checkpoints, synthetic_shards):
    pytest.importorskip("nvidia.dali")
    split = synthetic_shards / "test"
    options = dict(iw_samples=0, reconstructions=False, batch_size=6)
    _assert_same(_scalars(_evaluate(checkpoints["learned"], split, loader="dali", num_workers=1, **options)),
                 _scalars(_evaluate(checkpoints["learned"], split, **options)))


def test_one_rank_and_two_ranks_agree(checkpoints, synthetic_shards):
    """Two ranks simulated in one process: each rank's loader and pass, then the reducer's sum."""
    vae, _ = load_vae(checkpoints["learned"])
    split = synthetic_shards / "test"
    options = dict(seed=0, samples=2, iw_samples=2, reconstructions=True)

    def sums(rank: int, world: int, batch: int) -> dict:
        loader = make_loader("resident", split, batch, "cpu", rank=rank, world_size=world, shuffle=False,
                             drop_last=False)
        loader.set_epoch(0)
        return split_sums(vae, loader, lambda t: t, **options)

    single = summarize(sums(0, 1, 6), 128)
    double = summarize(add_sums(sums(0, 2, 4), sums(1, 2, 4)), 128)  # 20 images: rank batches padded, masked
    assert double["images"] == single["images"]
    _assert_same(double, single)


@pytest.mark.slow
def test_two_real_processes_give_the_one_process_numbers(checkpoints, synthetic_shards, tmp_path):
    common = ["--checkpoint", str(checkpoints["learned"]), "--shards", str(synthetic_shards / "test"), "-K", "2",
              "--batch-size", "4"]
    assert eval_main([*common, "--json", str(tmp_path / "one.json"), "--out", str(tmp_path)]) == 0
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "eval",
               *common, "--json", str(tmp_path / "two.json"), "--out", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert two["world_size"] == 2 and two["images"] == one["images"]
    _assert_same(_scalars(two), _scalars(one))


@pytest.mark.slow
def test_fixed_sigma_model_gets_the_best_global_sigma_fitted_on_valid(checkpoints, synthetic_shards):
    report = _evaluate(checkpoints["fixed"], synthetic_shards / "test", iw_samples=0)
    fixed = report["fixed_sigma"]
    assert fixed["fitted_on"] == str(synthetic_shards / "valid")
    assert fixed["test_bpd"] < report["metrics"]["bpd"]  # far better than the untrained model's own sigma
    assert fixed["test_bpd"] == pytest.approx(report["metrics"]["fixed_sigma_bpd"])
    # The histogram objective matches exact passes over valid, and the fitted sigma is the exact minimum.
    vae, _ = load_vae(checkpoints["fixed"])
    loader = make_loader("resident", synthetic_shards / "valid", 64, "cpu", shuffle=False, drop_last=False)
    loader.set_epoch(0)
    exact = {}
    for shift in (-0.2, 0.0, 0.2):
        sums = split_sums(vae, loader, lambda t: t, fixed_logvar=fixed["logvar"] + shift, residuals=shift == 0)
        exact[shift] = summarize(sums, 128)["fixed_sigma_nll_bpd"]
        if shift == 0:
            histograms = sums["residuals"]
    assert exact[0.0] < exact[-0.2] and exact[0.0] < exact[0.2]
    assert fixed["valid_nll_bpd"] == pytest.approx(exact[0.0], rel=1e-4)
    assert histogram_nll(histograms, fixed["logvar"]) / math.log(2) == pytest.approx(exact[0.0], rel=1e-4)
    # A learned-variance model has no sigma to fit.
    assert _evaluate(checkpoints["learned"], synthetic_shards / "test", iw_samples=0)["fixed_sigma"] is None


# ----------------------------------------------------------------------------- the commands


@pytest.mark.slow
def test_eval_command_writes_table_json_figure_and_the_caveat(checkpoints, synthetic_shards, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(checkpoints["collapsed"]), "--shards", str(synthetic_shards / "test"), "-K", "2",
            "--out", str(out)]
    assert eval_main(argv) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps at the console width
    report = json.loads((out / "eval-test.json").read_text())
    assert (out / "kl_per_component-test.png").stat().st_size > 5000
    for key in ("discretized_nll", "gaussian_nll", "kl", "bpd", "iw_nll", "mse", "psnr", "harmonic", "active_units"):
        assert key in report["metrics"], key
    assert len(report["per_component"]["kl"]) == len(report["per_component"]["mu_variance"]) == 128
    assert report["metrics"]["active_units"] == 0 and report["iw_samples"] == 2 and report["z_samples"] == 1
    assert "collapsed posterior" in printed and "fewer than a quarter" in printed
    assert "harmonic metric" in printed and "IW NLL bound" in printed
    assert any("fewer than a quarter" in warning for warning in report["warnings"])


@pytest.mark.slow
def test_bonus_1_gives_the_numbers_eval_gives(checkpoints, synthetic_shards, tmp_path, capsys):
    common = ["--checkpoint", str(checkpoints["learned"]), "--shards", str(synthetic_shards / "test")]
    assert eval_main([*common, "-K", "3", "--out", str(tmp_path)]) == 0
    assert bonus_1.main([*common, "--out", str(tmp_path)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    ours, theirs = (json.loads((tmp_path / name).read_text()) for name in ("bonus_1-test.json", "eval-test.json"))
    assert ours["harmonic"] == theirs["harmonic"]  # n, k, H exactly, not approximately
    assert ours["metrics"]["discretized_nll"] == theirs["metrics"]["discretized_nll"]
    assert ours["z_samples"] == 1 and "z samples per image: 1" in printed
    assert f"H = {ours['harmonic']['H']:.6f}" in printed and "caveat" in printed


def test_a_run_checkpoint_folder_is_a_checkpoint(tiny_run, synthetic_shards, tmp_path):
    """A run's step folder also holds Accelerate's own model.safetensors (no model.json): the VAE is its vae/."""
    step_folder = list_checkpoints(tiny_run)[-1]
    assert (step_folder / "model.safetensors").is_file() and (step_folder / "vae").is_dir()
    split = ["--shards", str(synthetic_shards / "test")]
    for command, name in ((eval_main, "eval"), (bonus_1.main, "bonus_1")):
        for checkpoint, out in ((step_folder, tmp_path / "step"), (tiny_run, tmp_path / "run")):
            assert command(["--checkpoint", str(checkpoint), *split, "--out", str(out), "-K", "0"]) == 0
        by_step, by_run = (json.loads((folder / f"{name}-test.json").read_text()) for folder in (tmp_path / "step",
                                                                                                 tmp_path / "run"))
        assert by_step["checkpoint"] == str(step_folder / "vae") and by_step["harmonic"] == by_run["harmonic"]


@pytest.fixture(scope="module")
def bad(synthetic_shards, tmp_path_factory, checkpoints) -> dict[str, Path]:
    """A split whose first shard is empty (0 bytes), and a checkpoint holding another preset's weights."""
    tmp_path = tmp_path_factory.mktemp("bad")
    empty = tmp_path / "empty-shards"
    shutil.copytree(synthetic_shards, empty)
    first = sorted((empty / "test").glob("*.tar"))[0]
    first.write_bytes(b"")
    mismatched = tmp_path / "mismatched"
    save_vae(mismatched, create_vae("base"), {"step": 0})  # weights of another preset ...
    shutil.copy(checkpoints["learned"] / "model.json", mismatched / "model.json")  # ... under the tiny config
    return {"empty": empty / "test", "empty_tar": first, "mismatched": mismatched}


@pytest.mark.parametrize("command", [eval_main, bonus_1.main], ids=["eval", "bonus_1"])
def test_bad_input_is_one_clear_line_naming_the_path(command, bad, checkpoints, synthetic_shards, tmp_path, capsys):
    good_ckpt, good_split = str(checkpoints["learned"]), str(synthetic_shards / "test")
    cases = [
        ([str(tmp_path / "no-such-checkpoint"), good_split], str(tmp_path / "no-such-checkpoint")),
        ([str(bad["mismatched"]), good_split], str(bad["mismatched"] / "model.safetensors") + ": weights do not match"),
        ([good_ckpt, str(tmp_path / "no-such-split")], str(tmp_path / "no-such-split")),
        ([good_ckpt, str(synthetic_shards)], "pass a split folder"),
        ([good_ckpt, str(bad["empty"])], str(bad["empty_tar"])),
    ]
    for (checkpoint, shards), expected in cases:
        assert command(["--checkpoint", checkpoint, "--shards", shards, "--out", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert expected in " ".join(err.split()), (expected, err)  # rich may wrap long lines
        assert "Traceback" not in err


@pytest.mark.slow
def test_bonus_1_script_fails_without_a_traceback(synthetic_shards, tmp_path):
    missing = tmp_path / "missing-checkpoint"
    result = subprocess.run([sys.executable, str(REPO / "bonus_1.py"), "--shards", str(synthetic_shards / "test"),
                             "--checkpoint", str(missing)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1
    assert str(missing) in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


@pytest.mark.parametrize("likelihood", ["gaussian_fixed", "gaussian_learned", "gaussian_shared", "gaussian_rgb",
                                        "logistic_mixture", "categorical", "bernoulli"])
@pytest.mark.slow
def test_every_decoder_likelihood_trains_and_evaluates(likelihood, synthetic_shards, tmp_path):
    """A few steps with each decoder, then eval (discretized NLL >= 0, finite bound, PSNR) on its checkpoint. A 1x1
    output convolution: the categorical's 768 channels at 3x3 would be most of the test's time."""
    from train.run import main as train_main

    run = tmp_path / likelihood
    assert train_main(["--shards", str(synthetic_shards), "--out", str(run), "--preset", "tiny", "--likelihood",
                       likelihood, "--head-kernel-size", "1", "--batch-size", "16", "--epochs", "1", "--max-steps",
                       "3", "--compile", "off", "--precision", "fp32", "--no-figures"]) == 0
    assert eval_main(["--checkpoint", str(run), "--shards", str(synthetic_shards / "test"), "-K", "2",
                      "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval-test.json").read_text())
    metrics = report["metrics"]
    assert report["likelihood"] == likelihood and metrics["discretized_nll"] > 0
    assert math.isfinite(metrics["iw_bpd"]) and metrics["iw_bpd"] <= metrics["mc_bpd"] + 1e-9
    assert math.isfinite(metrics["psnr"]) and math.isfinite(metrics["harmonic"])
    if likelihood in ("logistic_mixture", "categorical", "bernoulli"):  # the training loss is the probability
        assert metrics["gaussian_nll"] == pytest.approx(metrics["discretized_nll"])
    if likelihood == "bernoulli":
        assert any("binarised" in warning for warning in report["warnings"])
        assert metrics["nll_bpd"] <= 1.0 + 1e-6 or metrics["nll_bpd"] > 0  # bits of binary data
    bonus = tmp_path / "bonus"
    assert bonus_1.main(["--checkpoint", str(run), "--shards", str(synthetic_shards / "test"), "--out", str(bonus)]) == 0
    assert math.isfinite(json.loads((bonus / "bonus_1-test.json").read_text())["harmonic"]["H"])


def test_frechet_distance_known_answers():
    from eval.sample_quality import frechet_distance

    torch.manual_seed(0)
    a = torch.randn(500, 6) @ torch.randn(6, 6) + 3.0
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 1.0])
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-8)
    # b = s (a - m) + m: C_b = s^2 C_a, so FD = Tr(C_a) (1 - s)^2
    scaled = 0.5 * (a - a.mean(0)) + a.mean(0)
    assert frechet_distance(a, scaled) == pytest.approx(float(torch.cov(a.double().T).trace()) * 0.25, rel=1e-8)


def test_high_frequency_energy_of_a_checkerboard_and_a_flat_image():
    from eval.sample_quality import high_frequency_energy

    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    board = ((i + j) % 2 * 10).to(torch.uint8).expand(2, 3, 8, 8)  # 0 and 10 alternating
    assert high_frequency_energy(board) == pytest.approx(16 * 10 ** 2)  # the Laplacian is +-4 x 10 everywhere
    assert high_frequency_energy(torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)) == 0


@pytest.mark.slow
def test_eval_with_a_judge_reports_sample_quality(tiny_run, synthetic_shards, tmp_path, capsys):
    from model.classifier import AttributeClassifier, ClassifierConfig, save_classifier

    dataset = json.loads((synthetic_shards / "dataset.json").read_text())
    names = dataset["attribute_names"]
    torch.manual_seed(0)
    save_classifier(tmp_path / "judge", AttributeClassifier(ClassifierConfig(width=8, attribute_names=names)), {})
    assert eval_main(["--checkpoint", str(tiny_run), "--shards", str(synthetic_shards / "test"), "-K", "0",
                      "--judge", str(tmp_path / "judge"), "--quality-images", "40", "--out", str(tmp_path)]) == 0
    quality = json.loads((tmp_path / "eval-test.json").read_text())["sample_quality"]
    assert quality["images"] == min(40, dataset["counts"]["test"]) and quality["features"] == 64
    for key in ("fd_reconstructions", "fd_real_reference", "fd_samples_t0.2", "fd_samples_t1.5"):
        assert math.isfinite(quality[key]) and quality[key] >= -1e-6, key
    assert 0 < quality["mean_face_psnr_t0.2"] < 99 and 0 < quality["mean_face_psnr_decode_zero"] < 99
    assert 0 < quality["detail_kept_reconstructions"] < 2
    printed = " ".join(capsys.readouterr().out.split())
    assert "Fréchet" in printed and "mean-face" in printed  # rich may wrap the labels
    assert "other readings of H, not the project's" in printed


@pytest.mark.slow
def test_sweep_trains_and_scores_every_configuration(synthetic_shards, tmp_path):
    from eval.sweep import main as sweep_main

    out = tmp_path / "sweep"
    flags = ["--latent-dims", "16,32", "--betas", "1", "--rates", "0,5", "--minutes", "0.03"]
    train = ["--", "--preset", "tiny", "--batch-size", "16", "--warmup-images", "64", "--compile", "off",
             "--precision", "fp32", "--no-figures"]
    assert sweep_main(["--shards", str(synthetic_shards), "--out", str(out), *flags, *train]) == 0
    results = json.loads((out / "sweep.json").read_text())["results"]
    assert [(r["latent_dim"], r["beta"], r["rate_target"]) for r in results] == [
        (16, 1.0, 0.0), (16, 1.0, 5.0), (32, 1.0, 0.0), (32, 1.0, 5.0)]
    assert (out / "latent32-beta1-rate5" / "config.json").is_file()
    assert all(math.isfinite(r["harmonic"]) and r["bpd"] > 0 for r in results)
    assert (out / "sweep.png").stat().st_size > 10_000
    stamp = (out / "latent16-beta1" / "eval" / "eval-test.json").stat().st_mtime_ns
    assert sweep_main(["--shards", str(synthetic_shards), "--out", str(out), *flags, *train]) == 0  # skips done runs
    assert (out / "latent16-beta1" / "eval" / "eval-test.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_latent_maps_of_a_2d_model_and_of_a_larger_one(synthetic_shards, tmp_path, capsys):
    from train.run import main as train_main

    for latent in (2, 128):
        run = tmp_path / f"latent{latent}"
        assert train_main(["--shards", str(synthetic_shards), "--out", str(run), "--preset", "tiny", "--latent-dim",
                           str(latent), "--batch-size", "16", "--epochs", "1", "--max-steps", "2", "--compile", "off",
                           "--precision", "fp32", "--no-figures"]) == 0
        assert eval_main(["--checkpoint", str(run), "--shards", str(synthetic_shards / "test"), "-K", "0",
                          "--color-by", "eyeglasses", "--out", str(run / "eval")]) == 0
        maps = json.loads((run / "eval" / "eval-test.json").read_text())["latent_maps"]
        names = sorted(Path(m).name for m in maps)
        assert names == (["latent_manifold.png", "latent_map-test.png"] if latent == 2 else ["latent_map-test.png"])
        assert all(Path(m).stat().st_size > 10_000 for m in maps)
    assert eval_main(["--checkpoint", str(run), "--shards", str(synthetic_shards / "test"), "--color-by",
                      "Eyeglases", "--out", str(tmp_path)]) == 1
    assert "unknown attribute 'Eyeglases'; close matches: Eyeglasses" in " ".join(capsys.readouterr().err.split())


@pytest.mark.slow
def test_deterministic_autoencoder_trains_evaluates_and_refuses_the_kl_metrics(synthetic_shards, tmp_path, capsys):
    from train.run import main as train_main

    run = tmp_path / "ae"
    assert train_main(["--shards", str(synthetic_shards), "--out", str(run), "--model", "ae", "--preset", "tiny",
                       "--batch-size", "16", "--epochs", "1", "--compile", "off", "--precision", "fp32"]) == 0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kl"] == 0 and r["posterior_std"] == 0 for r in steps if r["kind"] == "step")
    assert (run / "figures" / "interpolation_epoch000.png").is_file()
    vae, _ = load_vae(run)
    assert vae.encode(torch.zeros(1, 3, 64, 64))[1] is None  # a point latent, no posterior variance
    split = ["--checkpoint", str(run), "--shards", str(synthetic_shards / "test"), "--out", str(tmp_path)]
    assert eval_main(split) == 0  # -K 16 by default: skipped, there is no posterior to sample
    report = json.loads((tmp_path / "eval-test.json").read_text())
    assert report["harmonic"] is None and "bpd" not in report["metrics"] and "iw_nll" not in report["metrics"]
    assert report["metrics"]["discretized_nll"] > 0 and math.isfinite(report["metrics"]["psnr"])
    assert any("point latent" in warning for warning in report["warnings"])
    assert not (tmp_path / "kl_per_component-test.png").exists()  # no KL, no all-zero figure
    capsys.readouterr()
    assert bonus_1.main(split) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "an autoencoder (ae) with a point latent: it has no KL, so the harmonic metric" in err


def test_prior_match_of_known_codes():
    from model.split_pass import prior_match

    torch.manual_seed(0)
    for scale, shift in ((1.0, 0.0), (0.5, 2.0)):
        mu = (torch.randn(20_000, 8) * scale + shift).double()
        sums = {"totals": torch.tensor([len(mu)], dtype=torch.float64), "mu_sum": mu.sum(0), "mu_outer": mu.T @ mu}
        match = prior_match(sums)
        assert match["mean_rms"] == pytest.approx(shift, abs=0.02)
        # Cov = scale^2 I (up to sampling noise): |Cov - I|_F / sqrt(d) = |scale^2 - 1|
        assert match["cov_distance_to_identity"] == pytest.approx(abs(scale**2 - 1), abs=0.03)
        assert match["cov_eigenvalue_min"] == pytest.approx(scale**2, rel=0.1)


@pytest.mark.slow
def test_adversarial_autoencoder_pulls_the_codes_toward_the_prior(synthetic_shards, tmp_path):
    """The regularisation phase (lambda < 1) brings the codes closer to N(0, I) than lambda = 1 (a plain autoencoder:
    the phase's rate is 0) on the valid split (a 4-d latent, so its 20 images pin the covariance down), and leaves a
    discriminator that can barely tell them from prior draws."""
    from train.run import main as train_main

    match = {}
    for aae_lambda in ("1", "0.5"):
        run = tmp_path / f"aae-lambda{aae_lambda}"
        assert train_main(["--shards", str(synthetic_shards), "--out", str(run), "--model", "aae", "--aae-lambda",
                           aae_lambda, "--preset", "tiny", "--latent-dim", "4", "--batch-size", "16", "--epochs", "4",
                           "--lr", "2e-3", "--warmup-images", "8000", "--compile", "off", "--precision", "fp32",
                           "--no-figures"]) == 0
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert all(0 <= r["discriminator_accuracy"] <= 1 and r["discriminator_loss"] > 0 for r in steps
                   if r["kind"] == "step")
        assert eval_main(["--checkpoint", str(run), "--shards", str(synthetic_shards / "valid"), "--out",
                          str(run / "eval")]) == 0
        report = json.loads((run / "eval" / "eval-valid.json").read_text())
        assert 0 <= report["discriminator_accuracy"] <= 1
        match[aae_lambda] = (report["prior_match"]["cov_distance_to_identity"], report["discriminator_accuracy"])
    print(match)
    assert match["0.5"][0] < match["1"][0] and match["0.5"][1] < 0.75, match
