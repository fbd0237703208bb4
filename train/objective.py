"""What one training step computes, as a module so `torch.compile` and DDP see a single graph.

The objective takes the loader's uint8 batch and does the normalisation itself, so the conversion to
the model's range and dtype is fused into the compiled step on the device (never a CPU pass over floats).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from model import VAE, kl_diag_gaussian, to_model_range

# "gaussian_nll" is the reconstruction term the loss differentiates: the continuous Gaussian NLL for the
# Gaussian decoders, the discretized NLL itself for the logistic mixture (whose density is a probability).
# Two diagnostics: the decoder's standard deviation in grey levels (its likelihood's `std`) and the posterior's,
# the mean over latent components of q(z|x)'s sigma (latent units; 1 is the prior's). A model kind's own phases
# add theirs after these (train.phases).
STAT_NAMES = ("loss", "gaussian_nll", "discretized_nll", "kl", "decoder_std", "posterior_std")
GREY_LEVELS_PER_UNIT = 127.5  # model units -> 0..255 pixel units


class VAEObjective(nn.Module):
    """The reconstruction step of every model kind, over the model's encoder and decoder only (`VAE.autoencoder`):
    a kind's extra modules are trained by its own phases, so neither this graph nor DDP sees them."""

    def __init__(self, vae: VAE, perceptual: nn.Module | None = None, perceptual_weight: float = 0.0):
        super().__init__()
        self.vae = vae.autoencoder()
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight

    def forward(self, images: torch.Tensor, kl_weight: torch.Tensor,
                eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 [B,3,64,64] -> (scalar loss, per-image means of the STAT_NAMES in their order, the codes mu).

        `kl_weight` is a 0-dim tensor (not a float) so the annealing schedule does not recompile the graph.
        `eps` [B, latent] is the posterior noise (the trainer's is keyed by image, `model.noise`); None draws it
        from torch's generator. The codes are detached, for a model kind's own phases (train.phases).
        """
        likelihood = self.vae.decoder.likelihood
        images = likelihood.observed(images)  # binarised for a Bernoulli decoder
        x = to_model_range(images)
        out = self.vae(x, eps=eps)
        nll = likelihood.nll(images, out.x_mean, out.x_params)
        if out.logvar is None:  # the deterministic and adversarial autoencoders: reconstruction only
            kl, posterior_std = torch.zeros_like(nll.train), torch.zeros((), device=images.device)
        else:
            kl, posterior_std = kl_diag_gaussian(out.mu, out.logvar), torch.exp(0.5 * out.logvar.float()).mean()
        loss = nll.train + kl_weight * kl
        if self.perceptual is not None:
            loss = loss + self.perceptual_weight * self.perceptual(out.x_mean.float(), x)
        loss = loss.mean()
        stats = torch.stack([loss, nll.train.mean(), nll.discretized.mean(), kl.mean(),
                             GREY_LEVELS_PER_UNIT * likelihood.std(out.x_params, len(images)).mean(),
                             posterior_std]).detach()
        return loss, stats, out.mu.detach()


def kl_weight(images: int, schedule: str, beta: float, anneal_images: int, cycle_ramp: float) -> float:
    """beta times the annealing weight after `images` training images: linear warm-up 0 -> 1, or cyclical (Fu et
    al. 2019) ramps. In images, not steps, so the curve is the same for any number of processes."""
    if schedule == "none" or anneal_images <= 0:
        return beta
    if schedule == "linear":
        return beta * min(1.0, images / anneal_images)
    if schedule == "cyclical":
        phase = (images % anneal_images) / anneal_images
        return beta * min(1.0, phase / cycle_ramp)
    raise ValueError(f"unknown KL annealing schedule {schedule!r}; use linear, cyclical or none")


def lr_factor(images: int, warmup_images: int, total_images: int, min_ratio: float) -> float:
    """The rate's factor for the step that completes `images` training images: linear warm-up, then cosine
    decay to `min_ratio` at `total_images`."""
    if images < warmup_images:
        return images / warmup_images
    progress = min(1.0, (images - warmup_images) / max(1, total_images - warmup_images))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's weights (checkpointed as the run's `vae/` folder).

    One `torch._foreach_lerp_` per step over all floating-point tensors, with the weight a device tensor: no
    Python loop of kernels and no host-device sync. The model's tensors must be updated in place, never
    replaced (the trainer's optimizer, recentring and resume all do so), since their list is made once.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self._pairs: tuple[list[torch.Tensor], ...] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, good: torch.Tensor) -> None:
        """Average in the model after `step`; `good` (a 0-dim float tensor, 1 or 0) leaves the average as it was
        when 0 (a skipped, non-finite step)."""
        if self._pairs is None:
            state = model.state_dict()
            floats = [name for name, value in self.shadow.items() if value.is_floating_point()]
            others = [name for name in self.shadow if name not in floats]
            self._pairs = ([self.shadow[n] for n in floats], [state[n] for n in floats],
                           [self.shadow[n] for n in others], [state[n] for n in others])
        shadow_floats, model_floats, shadow_others, model_others = self._pairs
        # Warm-up (1+t)/(10+t): early averages must not be dominated by the random initial weights.
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(shadow_floats, model_floats, good * (1.0 - decay))
        for shadow, value in zip(shadow_others, model_others):  # integer buffers (update counters)
            shadow.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)
