"""The recipes: the device picks the default, every config field is a flag, the choice is recorded, trackers."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from common.flags import value_parser
from model.vae import PRESETS, VAEConfig
from train.config import TrainConfig
from train.recipes import CPU, GPU, RECIPES, build_parser, resolve
from train.run import main as train_main

H100 = "NVIDIA H100 80GB HBM3"
TINY_RUN = ["--preset", "tiny", "--batch-size", "16", "--warmup-images", "48", "--kl-anneal-images", "160",
            "--compile", "off", "--precision", "fp32", "--no-figures"]


@pytest.fixture
def gpu_preset(monkeypatch):
    """The gpu recipe's preset, where model/vae.py does not have it yet: the base widths with the cpu preset's
    decoder (norm-free, RGB-covariance Gaussian)."""
    if "gpu" not in PRESETS:
        monkeypatch.setitem(PRESETS, "gpu", dict(PRESETS["base"], likelihood="gaussian_rgb", decoder_norm="none"))


def test_the_cpu_gets_the_cpu_recipe_and_cuda_the_gpu_recipe(gpu_preset):
    cfg, model_cfg, choice = resolve(["--shards", "s"], "cpu", "")
    assert (choice.recipe, choice.preset, choice.reason) == ("cpu", "cpu", "no CUDA device")
    assert model_cfg == VAEConfig.from_preset("cpu")
    assert (cfg.lr, cfg.batch_size, cfg.warmup_images, cfg.kl_anneal_images) == (2e-3, 32, 3_200, 32_000)
    assert (cfg.minutes, cfg.epochs, cfg.shards) == (20.0, 0, "s")

    cfg, model_cfg, choice = resolve([], "cuda", H100)
    assert (choice.recipe, choice.preset) == ("gpu", "gpu") and H100 in choice.reason
    assert choice.line() == f"recipe gpu: CUDA device {H100} found (model preset gpu)"
    assert model_cfg == VAEConfig.from_preset("gpu")
    assert model_cfg.decoder_norm == "none" and model_cfg.likelihood == "gaussian_rgb"
    assert dataclasses.asdict(cfg) == dataclasses.asdict(TrainConfig(**GPU.settings()))
    assert (cfg.epochs, cfg.minutes) == (40, 0.0)


def test_every_recipe_sets_every_field_without_a_default(gpu_preset):
    required = {spec.name for spec in dataclasses.fields(TrainConfig) if spec.default is dataclasses.MISSING}
    for recipe in RECIPES.values():
        assert required <= recipe.train.keys(), recipe.name
        assert recipe.preset in PRESETS
        assert len(recipe.budget) == 1 and recipe.budget.keys() <= {"epochs", "minutes"}


def test_flags_replace_the_recipe_and_a_budget_flag_its_whole_budget(gpu_preset):
    cfg, _, choice = resolve(["--recipe", "cpu", "--lr", "1e-3"], "cuda", H100)
    assert (choice.recipe, choice.reason, cfg.lr, cfg.batch_size) == ("cpu", "--recipe cpu", 1e-3, 32)
    cfg, _, choice = resolve(["--cpu"], "cuda", H100)
    assert (choice.recipe, choice.reason, cfg.cpu) == ("cpu", "--cpu", True)
    cfg, _, _ = resolve(["--epochs", "3"], "cpu", "")
    assert (cfg.epochs, cfg.minutes) == (3, 0.0)  # not the cpu recipe's 20 minutes besides
    cfg, _, _ = resolve(["--minutes", "5"], "cuda", H100)
    assert (cfg.epochs, cfg.minutes) == (0, 5.0)
    cfg, model_cfg, choice = resolve(["--preset", "tiny", "--latent-dim", "64"], "cpu", "")
    assert choice.preset == "tiny" and cfg.lr == CPU.train["lr"]
    assert model_cfg == VAEConfig.from_preset("tiny", latent_dim=64)


def test_the_bonus_recipe_is_the_cpu_recipe_with_a_spatial_latent_2048_and_its_rate_held():
    cfg, model_cfg, choice = resolve(["--recipe", "bonus"], "cuda", H100)
    assert (choice.recipe, choice.preset) == ("bonus", "cpu")
    assert model_cfg == VAEConfig.from_preset("cpu", channels=(16, 32), depths=(0, 1), mid_depth=1, latent_dim=2048,
                                              latent_channels=8, bottleneck_channels=32)
    assert model_cfg.latent_resolution == 16  # 8 channels x 16 x 16 = 2,048 components
    assert dataclasses.asdict(cfg) == dataclasses.asdict(TrainConfig(**CPU.settings(), rate_target=720.0))
    _, model_cfg, _ = resolve(["--recipe", "bonus", "--latent-dim", "1024", "--latent-channels", "4"], "cpu", "")
    assert model_cfg.latent_dim == 1024  # a flag still replaces the recipe's value


def test_every_model_config_field_is_a_flag():
    help_text = build_parser().format_help()
    for spec in dataclasses.fields(VAEConfig):
        assert f"--{spec.name.replace('_', '-')} " in help_text, spec.name
    # A value for each field unlike the cpu preset's, in the flags' own spelling.
    flags = {"image_size": "32", "in_channels": "3", "channels": "8,16,32", "depths": "1,0,1", "mid_depth": "1",
             "latent_dim": "48", "bottleneck_channels": "24", "latent_channels": "3", "likelihood": "gaussian_learned",
             "model": "aae", "discriminator_width": "64", "num_mixtures": "5", "shared_sigma_decay": "0.9",
             "logvar_range": "-8,2", "fixed_logvar": "-3", "enc_logvar_range": "-20,10",
             "last_upsample": "bilinear", "decoder_norm": "group", "head_kernel_size": "1", "mid_ratio": "0.25",
             "se_ratio": "0.5", "layer_scale_init": "0.1"}
    assert flags.keys() == {spec.name for spec in dataclasses.fields(VAEConfig)}
    _, model_cfg, _ = resolve([f"--{name.replace('_', '-')}={value}" for name, value in flags.items()], "cpu", "")
    expected = VAEConfig(image_size=32, channels=(8, 16, 32), depths=(1, 0, 1), mid_depth=1, latent_dim=48,
                         bottleneck_channels=24, latent_channels=3, likelihood="gaussian_learned", model="aae",
                         discriminator_width=64, num_mixtures=5, shared_sigma_decay=0.9, logvar_range=(-8.0, 2.0),
                         fixed_logvar=-3.0, enc_logvar_range=(-20.0, 10.0), last_upsample="bilinear",
                         decoder_norm="group", head_kernel_size=1, mid_ratio=0.25, se_ratio=0.5, layer_scale_init=0.1)
    assert model_cfg == expected
    # none: the derived bottleneck width again (the smallest multiple of 8 >= 16 with 8*8*Cb >= 2*256).
    _, model_cfg, _ = resolve(["--bottleneck-channels", "none"], "cpu", "")
    assert model_cfg.bottleneck_channels == 16


def test_flag_values_parse_by_the_fields_type():
    assert value_parser("tuple[int, ...]")("16,32,64") == (16, 32, 64)
    assert value_parser("tuple[float, float]")("-10,1") == (-10.0, 1.0)
    assert value_parser("int | None")("none") is None and value_parser("int | None")("24") == 24
    with pytest.raises(argparse.ArgumentTypeError, match="expected 2 comma-separated values"):
        value_parser("tuple[float, float]")("1,2,3")


@pytest.mark.parametrize("argv, message", [
    (["--decoder-norm", "batch"], "decoder_norm must be 'group' or 'none'"),
    (["--channels", "16,32", "--depths", "1,1,1"], "need equal, nonzero length"),
    (["--channels", "16,x"], "invalid tuple"),
    (["--recipe", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_flags_stop_with_one_line_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        resolve(argv, "cpu", "")
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("train/run.py: error:") and message in error, error


def test_a_tracker_that_is_not_installed_is_named(capsys, monkeypatch):
    import train.recipes

    monkeypatch.setattr(train.recipes, "is_wandb_available", lambda: False)
    with pytest.raises(SystemExit):
        resolve(["--report-to", "wandb"], "cpu", "")
    assert "--report-to wandb: the wandb package is not installed (pip install wandb)" in capsys.readouterr().err


def test_the_bare_command_trains_the_cpu_recipe_and_records_why(synthetic_shards, tmp_path, capsys):
    from train.checkpoint import load_vae

    out = tmp_path / "bare"
    assert train_main(["--shards", str(synthetic_shards), "--out", str(out), "--max-steps", "2", "--no-figures"]) == 0
    assert "recipe cpu: no CUDA device (model preset cpu)" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert {key: config[key] for key in ("recipe", "recipe_reason", "preset")} == {
        "recipe": "cpu", "recipe_reason": "no CUDA device", "preset": "cpu"}
    assert {key: config[key] for key in CPU.settings()} == dict(CPU.settings())
    assert VAEConfig(**{spec.name: config[spec.name] for spec in dataclasses.fields(VAEConfig)}) == \
        VAEConfig.from_preset("cpu")
    vae, meta = load_vae(out)
    assert vae.cfg == VAEConfig.from_preset("cpu") and meta["recipe"] == "cpu" and meta["preset"] == "cpu"


@pytest.mark.slow
def test_a_norm_free_decoder_and_a_spatial_latent_train_and_load_in_eval_bonus_and_edit(synthetic_shards, tmp_path):
    import bonus_1
    from edit.cli import main as edit_main
    from eval.cli import main as eval_main
    from model.classifier import AttributeClassifier, ClassifierConfig, save_classifier
    from train.checkpoint import load_vae

    run = tmp_path / "run"
    assert train_main(["--shards", str(synthetic_shards), "--out", str(run), *TINY_RUN, "--decoder-norm", "none",
                       "--last-upsample", "pixel_shuffle", "--channels", "8,16,32", "--latent-dim", "64",
                       "--latent-channels", "1", "--epochs", "1", "--max-steps", "3"]) == 0
    vae, meta = load_vae(run)
    assert (vae.cfg.decoder_norm, vae.cfg.last_upsample, vae.cfg.channels) == ("none", "pixel_shuffle", (8, 16, 32))
    assert vae.cfg.latent_channels == 1 and vae.encoder.to_latent.bias.shape == (2 * 64,)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in vae.decoder.modules())
    assert meta["config"]["decoder_norm"] == "none" and meta["preset"] == "tiny"
    assert eval_main(["--checkpoint", str(run), "--shards", str(synthetic_shards / "test"), "-K", "0",
                      "--out", str(tmp_path / "eval")]) == 0
    assert bonus_1.main(["--checkpoint", str(run), "--shards", str(synthetic_shards / "test"),
                         "--out", str(tmp_path / "bonus")]) == 0
    names = json.loads((synthetic_shards / "dataset.json").read_text())["attribute_names"]
    torch.manual_seed(0)
    save_classifier(tmp_path / "judge", AttributeClassifier(ClassifierConfig(width=8, attribute_names=names)), {})
    assert edit_main(["amplify", "--vae", str(run), "--judge", str(tmp_path / "judge"), "--shards",
                      str(synthetic_shards), "--out", str(tmp_path / "edit"), "--cpu", "--candidates", "8",
                      "--probe", "4"]) == 0
    assert (tmp_path / "edit" / "amplify.json").is_file()


@pytest.mark.slow
def test_tensorboard_receives_the_logged_metrics(synthetic_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert train_main(["--shards", str(synthetic_shards), "--out", str(out), *TINY_RUN, "--report-to", "tensorboard",
                       "--epochs", "1", "--log-every", "2"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps, epochs = [r for r in records if r["kind"] == "step"], [r for r in records if r["kind"] == "epoch"]
    events = EventAccumulator(str(out / "celeba-vae")).Reload()
    for name in ("loss", "kl", "lr", "kl_weight", "bpd"):
        logged = events.Scalars(f"train/{name}")
        assert [e.step for e in logged] == [r["images"] for r in steps], name  # the x-axis: images seen
        assert [e.value for e in logged] == pytest.approx([r[name] for r in steps], rel=1e-6), name
    assert [e.value for e in events.Scalars("train/step")] == [r["step"] for r in steps]
    (valid,) = events.Scalars("valid_epoch/bpd")
    assert (valid.step, valid.value) == (epochs[0]["step"] * 16, pytest.approx(epochs[0]["valid"]["bpd"], rel=1e-6))
