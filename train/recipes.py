"""The recipes: for each kind of device, the model preset and the training settings the project found best there.

`resolve` turns a `train/run.py` command line into the run's settings: the recipe the device calls for (or the one
`--recipe` names), its preset's model config, then every flag given on top. Every field of `TrainConfig` and of
`VAEConfig` is a flag, so `--help` lists them all.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

from accelerate.utils import is_tensorboard_available, is_wandb_available

from common.flags import add_flags, flag_text, given_flags
from model.vae import PRESETS, VAEConfig
from train.config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """A model preset and the training settings that go with it."""

    name: str
    preset: str  # an entry of model/vae.py's PRESETS
    train: Mapping[str, Any]  # TrainConfig fields; every field without a default is here
    budget: Mapping[str, Any]  # epochs or minutes; --epochs or --minutes replaces it whole
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # VAEConfig fields over the preset's

    def settings(self) -> dict[str, Any]:
        return {**self.train, **self.budget}


# The CPU recipe, measured on 2 CPU cores (BENCHMARKS.md, the real 9,803-image sample, --minutes 20: 5.54 bits/dim,
# PSNR 24.1 dB, temperature-0.2 samples 28.7 dB from the mean face). The cpu preset: the tiny widths without the
# full-resolution ResNeXt blocks, pixel-shuffle last upsample, norm-free decoder, latent 256, RGB-covariance
# Gaussian. A 20-minute run at batch 32 sees about 224,000 images (7,000 steps).
CPU = Recipe("cpu", preset="cpu", train=dict(
    batch_size=32,
    lr=2e-3,
    warmup_images=3_200,  # 100 steps
    kl_anneal_images=32_000,  # 1,000 steps, 14 % of the 20-minute run (a 300-step ramp scored the same)
), budget=dict(minutes=20.0))

# The GPU recipe, for one H100 on all of CelebA (162,770 training images). Never run on a GPU yet: the model carries
# every lesson of the CPU recipe (preset gpu: the base widths, norm-free decoder, RGB-covariance Gaussian); the
# optimisation is the CPU recipe's, carried over by the rules below.
GPU = Recipe("gpu", preset="gpu", train=dict(
    # A global batch of 128: moderate (the course: very large batches collapse reconstructions to the mean), 16 per
    # GPU on 8 GPUs, and enough work per step for the base widths (26-32 GFLOP per image forward + backward,
    # counted; the course's 3-9 GB of memory at batch 32 becomes about 12-36 GB).
    batch_size=128,
    # The CPU recipe's 2e-3 at batch 32, x2 for the 4x batch (Adam's square-root batch scaling), /4 for hidden
    # layers 8x wider than the cpu preset's: an Adam step moves a layer's outputs in proportion to its fan-in, so
    # muP scales the rate by 1/width; the stem (fan-in 27) and the Linear to the latent (fan-in 8*8*16) keep their
    # fan-in, hence less than the full 1/8.
    lr=1e-3,
    # 64,000 images (500 steps, 0.4 epoch): Adam's second-moment estimates settle over steps, so 5x the CPU
    # recipe's 100 steps for the larger rate and network.
    warmup_images=64_000,
    # 640,000 images (5,000 steps, 4 epochs): a tenth of the run, as the CPU recipe's ramp is 14 % of its run.
    kl_anneal_images=640_000,
    # The codes are recentred every 3,200 images (TrainConfig's default) as on the CPU: every 25 steps here.
), budget=dict(epochs=40))  # 6.5 M images, 50,900 steps; the CPU recipe's run is 224,000 images

# The harmonic metric's recipe on CPU cores: the CPU recipe's training with the KL held at 720 nats per image
# (train.rate) over 2,048 latent components, k = 0.5 bits each, in a spatial latent: the cpu network stopped at 16x16
# (two stages, one ResNeXt block at 16x16 each side), 8 latent channels per position. Each component codes a 4x4
# patch, so the decoder reads a local code instead of 2,048 noisy global components through a Linear, at 1.3x the
# CPU recipe's steps per second. Real sample, 20 minutes (BENCHMARKS.md): H 0.92 with 1,264/2,048 components
# active, PSNR 26.3 dB and 5.50 bits/dim (CPU recipe: H 4.57, 24.1 dB, 5.53); prior samples at temperature 1 are
# patchwork, and a single component changes one patch (a dense latent 2048 at the same rate: H 0.93, 23.3 dB).
BONUS = Recipe("bonus", preset="cpu", model=dict(channels=(16, 32), depths=(0, 1), mid_depth=1, latent_dim=2048,
                                                  latent_channels=8, bottleneck_channels=32),
               train={**CPU.train, "rate_target": 720.0}, budget=CPU.budget)

RECIPES = {recipe.name: recipe for recipe in (CPU, GPU, BONUS)}


@dataclass(frozen=True)
class RecipeChoice:
    """Which recipe and preset a run follows, and why: printed at the start, stored in config.json and in every
    checkpoint's model.json."""

    recipe: str
    preset: str
    reason: str

    def line(self) -> str:
        return f"recipe {self.recipe}: {self.reason} (model preset {self.preset})"

    def record(self) -> dict[str, str]:
        return {"recipe": self.recipe, "recipe_reason": self.reason, "preset": self.preset}


class Settings(NamedTuple):
    train: TrainConfig
    model: VAEConfig
    choice: RecipeChoice


def recipe_for_device(device_type: str, device_name: str) -> tuple[Recipe, str]:
    """The recipe for a device type as torch names it ("cuda", "cpu"), with the reason."""
    if device_type == "cuda":
        return GPU, f"CUDA device {device_name} found"
    return CPU, "no CUDA device"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train/run.py", description="Train the CelebA VAE (launch with `accelerate launch` for GPUs). With no "
        "flags it trains the recipe for the device it runs on; any flag given replaces the recipe's value.")
    choice = parser.add_argument_group("recipe")
    choice.add_argument("--recipe", choices=sorted(RECIPES),
                        help="default: gpu on a CUDA device, else cpu (train/recipes.py gives each one's settings)")
    choice.add_argument("--preset", choices=sorted(PRESETS),
                        help="the model config the model flags start from (default: the recipe's)")
    recipe_fields = {name for recipe in RECIPES.values() for name in recipe.settings()}
    defaults = {name: "; ".join(f"{recipe.name} recipe {flag_text(recipe.settings().get(name, default_value(name)))}"
                                for recipe in RECIPES.values()) for name in recipe_fields}
    add_flags(parser.add_argument_group("training"), TrainConfig, defaults)
    presets = {recipe.preset: VAEConfig.from_preset(recipe.preset) for recipe in RECIPES.values()
               if recipe.preset in PRESETS}
    add_flags(parser.add_argument_group("model (every default is the preset's)"), VAEConfig,
              {spec.name: "; ".join(f"preset {name} {flag_text(getattr(config, spec.name))}"
                                    for name, config in presets.items()) or "the preset's"
               for spec in dataclasses.fields(VAEConfig)})
    return parser


def default_value(name: str) -> Any:
    return next(spec.default for spec in dataclasses.fields(TrainConfig) if spec.name == name)


def resolve(argv: list[str] | None, device_type: str, device_name: str) -> Settings:
    """The run's settings: the recipe (--recipe, else the device's), the preset (--preset, else the recipe's), then
    every flag given. `device_type` is the device torch offers ("cuda" or "cpu"), `device_name` its name."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_flags(TrainConfig, args)
    if args.recipe:
        recipe, reason = RECIPES[args.recipe], f"--recipe {args.recipe}"
    elif given.get("cpu"):
        recipe, reason = CPU, "--cpu"
    else:
        recipe, reason = recipe_for_device(device_type, device_name)
    budget = {} if given.keys() & {"epochs", "minutes"} else recipe.budget
    train = TrainConfig(**{**recipe.train, **budget, **given})
    preset = args.preset or recipe.preset
    try:
        model = VAEConfig.from_preset(preset, **{**recipe.model, **given_flags(VAEConfig, args)})
    except (KeyError, ValueError) as err:
        parser.error(f"model config (preset {preset}): {err}")
    tracker_installed = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    if train.report_to in tracker_installed and not tracker_installed[train.report_to]():
        parser.error(f"--report-to {train.report_to}: the {train.report_to} package is not installed "
                     f"(pip install {train.report_to})")
    return Settings(train, model, RecipeChoice(recipe.name, preset, reason))
