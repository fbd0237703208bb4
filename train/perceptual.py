"""Optional perceptual loss: squared feature distances under a frozen image network.

Nothing can be downloaded on our machines, so the network is named explicitly and its weights must already
be local: `torchvision:<arch>` uses torchvision's ImageNet weights from the torch hub cache
(`$TORCH_HOME/hub/checkpoints`); `classifier:<folder>` uses the project's own CelebA attribute classifier
(`python -m edit.classifier --out <folder>`), which needs nothing from outside.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from common.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Feature taps per torchvision architecture: enough depth for texture/shape, cheap at 64x64.
TORCHVISION_TAPS = {"resnet18": ("layer1", "layer2", "layer3"), "resnet50": ("layer1", "layer2", "layer3"),
                    "vgg16": ("features.8", "features.15", "features.22")}


class PerceptualError(UserError):
    pass


class FeatureDistance(nn.Module):
    """Per-image sum over taps of the mean squared feature difference (frozen network, inputs in [-1, 1])."""

    def __init__(self, network: nn.Module, taps: tuple[str, ...], mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.features = create_feature_extractor(network.eval(), return_nodes=list(taps)).requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def train(self, mode: bool = True) -> "FeatureDistance":
        super().train(mode)
        self.features.eval()  # frozen: BatchNorm statistics must never update
        return self

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        both = torch.cat([reconstruction, target])
        both = ((both + 1) / 2 - self.mean) / self.std
        total = 0.0
        for feature in self.features(both).values():
            recon, real = feature.float().chunk(2)
            total = total + (recon - real.detach()).square().flatten(1).mean(1)
        return total


def _torchvision_network(arch: str) -> nn.Module:
    import torchvision
    from torch.hub import get_dir

    if arch not in TORCHVISION_TAPS:
        raise PerceptualError(f"torchvision:{arch}: unsupported; choose one of {', '.join(TORCHVISION_TAPS)}")
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = Path(get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise PerceptualError(f"torchvision:{arch}: ImageNet weights are not in the local cache ({cached}); nothing "
                              f"can be downloaded here. Copy the file there, or use "
                              f"classifier:<folder> with the project's own CelebA classifier")
    network = torchvision.models.get_model(arch, weights=None)
    network.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    return network


def build_perceptual(spec: str, device: torch.device) -> nn.Module:
    kind, _, name = spec.partition(":")
    if kind == "torchvision" and name:
        network = _torchvision_network(name)
        return FeatureDistance(network, TORCHVISION_TAPS[name], IMAGENET_MEAN, IMAGENET_STD).to(device)
    if kind == "classifier" and name:
        # The classifier takes [-1, 1] inputs, hence mean = std = 0.5 here.
        from model.classifier import load_classifier

        network, _ = load_classifier(Path(name))
        return FeatureDistance(network, ("stem", "body"), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).to(device)
    raise PerceptualError(f"--perceptual {spec!r}: expected torchvision:<arch> or classifier:<folder>")
