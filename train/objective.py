"""What one training step computes, as a module so `torch.compile` and DDP see a single graph.

The objective takes the loader's uint8 batch and does the normalisation itself, so the conversion to
the model's range and dtype is fused into the compiled step on the device (never a CPU pass over floats).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import VAE, kl_diag_gaussian, to_model_range

# "gaussian_nll" is the reconstruction term the loss differentiates: the continuous Gaussian NLL for the
# Gaussian decoders, the discretized NLL itself for the logistic mixture (whose density is a probability).
# Two diagnostics: the decoder's standard deviation in grey levels (its likelihood's `std`) and the posterior's,
# the mean over latent components of q(z|x)'s sigma (latent units; 1 is the prior's).
# The adversarial autoencoder's three (zero for the other models), from its regularisation phase: the generator
# loss (the encoder fooling the discriminator), the discriminator's loss and its accuracy on prior draws against
# codes.
STAT_NAMES = ("loss", "gaussian_nll", "discretized_nll", "kl", "decoder_std", "posterior_std", "generator_loss",
              "discriminator_loss", "discriminator_accuracy")
GREY_LEVELS_PER_UNIT = 127.5  # model units -> 0..255 pixel units


class VAEObjective(nn.Module):
    def __init__(self, vae: VAE, perceptual: nn.Module | None = None, perceptual_weight: float = 0.0):
        super().__init__()
        self.vae = vae
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight

    def forward(self, images: torch.Tensor, kl_weight: torch.Tensor,
                eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 [B,3,64,64] -> (scalar loss, per-image means of the STAT_NAMES in their order, the codes mu).

        `kl_weight` is a 0-dim tensor (not a float) so the annealing schedule does not recompile the graph.
        `eps` [B, latent] is the posterior noise (the trainer's is keyed by image, `model.noise`); None draws it
        from torch's generator. For the
        adversarial autoencoder this is its reconstruction phase; `AdversarialPhases` does the rest with the
        (detached) codes and fills in the last three stats.
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
        stats = torch.cat([torch.stack([loss, nll.train.mean(), nll.discretized.mean(), kl.mean(),
                                        GREY_LEVELS_PER_UNIT * likelihood.std(out.x_params, len(images)).mean(),
                                        posterior_std]), torch.zeros(3, device=images.device)]).detach()
        return loss, stats, out.mu.detach()


class AdversarialPhases:
    """The regularisation phase of the adversarial autoencoder (Makhzani et al. 2016), after its reconstruction
    phase (the objective's step): first the discriminator learns to tell prior draws (real) from the codes the
    reconstruction phase produced (fake), then the encoder, run again with its updated weights, learns to fool
    the updated discriminator. Each update has its own AdamW, its own gradient clipping and a learning rate of
    the reconstruction's times (1 - lambda) / lambda: Adam is blind to a loss's scale, so the course's weights
    lambda and 1 - lambda on the two losses would cancel; as a ratio of step sizes they keep their meaning
    (lambda = 0.5: every phase at the same rate, as in Makhzani et al.; lambda -> 1: a plain autoencoder).

    Runs eagerly beside the compiled, DDP-wrapped reconstruction step; gradients are averaged over ranks by
    hand, so every rank takes the same steps.
    """

    def __init__(self, vae: VAE, aae_lambda: float, weight_decay: float, grad_clip: float):
        if not 0.0 < aae_lambda <= 1.0:
            raise ValueError(f"the adversarial autoencoder's lambda must be in (0, 1], got {aae_lambda}")
        self.vae, self.grad_clip = vae, grad_clip
        self.lr_ratio = (1.0 - aae_lambda) / aae_lambda
        self.critic_params = list(vae.discriminator.parameters())
        self.encoder_params = list(vae.encoder.parameters())
        # beta1 = 0.5, as usual for adversarial updates: less momentum carried across the players' moves.
        self.critic_optimizer = torch.optim.AdamW(self.critic_params, betas=(0.5, 0.99), weight_decay=weight_decay)
        self.generator_optimizer = torch.optim.AdamW(self.encoder_params, betas=(0.5, 0.99),
                                                     weight_decay=weight_decay)

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.critic_optimizer, self.generator_optimizer

    def step(self, images: torch.Tensor, codes: torch.Tensor, prior: torch.Tensor, lr: float,
             reduce) -> torch.Tensor:
        """uint8 images, the reconstruction phase's codes and as many prior draws (the trainer's are keyed by
        image, so each rank draws its own) -> [generator loss, discriminator loss, accuracy].
        `lr` is the reconstruction phase's current rate; `reduce(tensor)` averages a tensor over ranks."""
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr * self.lr_ratio
        critic = self.vae.discriminator
        real, fake = critic(prior), critic(codes)
        critic_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                       + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        accuracy = ((real > 0).float().mean() + (fake < 0).float().mean()) / 2
        self._update(critic_loss, self.critic_params, self.critic_optimizer, reduce)

        mu, _ = self.vae.encoder(to_model_range(self.vae.decoder.likelihood.observed(images)))
        frozen = {name: value.detach() for name, value in critic.named_parameters()}
        fooled = torch.func.functional_call(critic, frozen, (mu,))
        generator_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        self._update(generator_loss, self.encoder_params, self.generator_optimizer, reduce)
        return reduce(torch.stack([generator_loss, critic_loss, accuracy]).detach().float())

    def _update(self, loss: torch.Tensor, params: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                reduce) -> None:
        loss.backward()
        for p in params:
            if p.grad is not None:
                p.grad.copy_(reduce(p.grad))
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else math.inf)
        # A non-finite phase is skipped; if the model itself diverges, the reconstruction step's check stops the run.
        if torch.isfinite(norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


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
