"""What a model kind trains beyond the reconstruction step: its own phases, registered under the kind's name.

The core step (`train.objective.VAEObjective`, `train.step.TrainStep`) trains the encoder and decoder of every
kind and knows nothing of the rest. A kind that adds modules (`model.kinds`) registers here the phases that
train them: their optimizers (checkpointed with the run), the statistics they log after the core ones, and one
`step` after each reconstruction step. Kinds without an entry (vae, ae) have none.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from model import VAE, to_model_range
from train.config import TrainConfig

Reduce = Callable[[torch.Tensor], torch.Tensor]  # a tensor's mean over the processes


class ExtraPhases:
    stat_names: tuple[str, ...] = ()

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        return ()

    def step(self, images: torch.Tensor, codes: torch.Tensor, prior: torch.Tensor, lr: float,
             reduce: Reduce) -> torch.Tensor:
        """uint8 images, the reconstruction step's (detached) codes and as many prior draws (keyed by image, so
        each rank draws its own); `lr` is the reconstruction step's rate -> the `stat_names`, averaged over ranks."""
        raise NotImplementedError

    def state_dict(self) -> list[dict]:
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)


PHASES: dict[str, Callable[[VAE, TrainConfig], ExtraPhases]] = {}


def extra_phases(vae: VAE, cfg: TrainConfig) -> ExtraPhases | None:
    """The phases the model's kind trains besides the reconstruction step, or None."""
    build = PHASES.get(vae.cfg.model)
    return build(vae, cfg) if build else None


class AdversarialPhases(ExtraPhases):
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

    # The generator loss (the encoder fooling the discriminator), the discriminator's loss and its accuracy on
    # prior draws against codes.
    stat_names = ("generator_loss", "discriminator_loss", "discriminator_accuracy")

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
             reduce: Reduce) -> torch.Tensor:
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
                reduce: Reduce) -> None:
        loss.backward()
        for p in params:
            if p.grad is not None:
                p.grad.copy_(reduce(p.grad))
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else math.inf)
        # A non-finite phase is skipped; if the model itself diverges, the reconstruction step's check stops the run.
        if torch.isfinite(norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


PHASES["aae"] = lambda vae, cfg: AdversarialPhases(vae, cfg.aae_lambda, cfg.weight_decay, cfg.grad_clip)
