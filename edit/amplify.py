"""Feature amplification: move test faces along one latent direction, a latent axis (z_i + alpha) or a principal
axis of mu over train (z + alpha v), alpha in std of the data along it. The directions shown are those whose
effect on the judge's 40 probabilities, probed on valid images, is largest and most distinct (README, Editing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common.plots import save_effect_curves, save_grid
from edit.common import (GRID_SCALE, EditContext, EditError, EditSettings, choose_rows, edit_metrics, parse_ints,
                         principal_axes, to_images)
from model.split_pass import ACTIVE_THRESHOLD


@dataclass
class AmplifySettings(EditSettings):
    basis: str = field(default="axis", metadata={
        "help": "axis: single latent components (z_i + alpha); pca: principal axes of mu over train",
        "choices": ("axis", "pca")})
    count: int = field(default=4, metadata={"help": "directions to show"})
    components: str = field(default="", metadata={"help": "show these latent indices / PCs instead of discovering"})
    candidates: int = field(default=32, metadata={"help": "directions probed (largest data spread first)"})
    probe: int = field(default=12, metadata={"help": "valid images the discovery probes with"})
    alpha_max: float = field(default=3.0, metadata={"help": "alpha range, in std of the data along the direction"})
    num_alphas: int = 10
    max_similarity: float = field(default=0.6, metadata={
        "help": "skip a direction whose judge-effect vector has a larger |cosine| with a chosen one's"})


@dataclass
class Directions:
    """Unit directions [K, d], most spread first; the data's std along each [K]; and which latent index (axis
    basis) or principal axis (pca basis) each one is [K]."""
    basis: str
    vectors: torch.Tensor
    spread: torch.Tensor
    index: torch.Tensor

    def label(self, c: int) -> str:
        return f"{'latent' if self.basis == 'axis' else 'PC'} {int(self.index[c])}"

    def figure(self, c: int) -> str:
        return f"amplify_{'z' if self.basis == 'axis' else 'pc'}{int(self.index[c])}.png"


@dataclass
class Discovery:
    """The probe behind the choice of directions."""
    directions: Directions
    active: int  # directions along which the data varies more than ACTIVE_THRESHOLD
    candidates: list[int]  # positions in `directions` that were probed
    probe_images: int
    effects: torch.Tensor  # [candidates, attributes]: mean judge probability change from -A to +A std
    pixel_change: list[float]  # per candidate: mean |pixel change| between the two ends, 0..255
    chosen: list[int]  # positions in `candidates` to show, best first


@dataclass
class Sweeps:
    """The subjects moved along each chosen direction: decoded (model range, for the judge) and as images."""
    subject_rows: np.ndarray
    alpha_in_std: torch.Tensor  # [num_alphas]
    reconstruction: torch.Tensor  # dec(mu) of the subjects
    decoded: list[torch.Tensor]  # per chosen direction [subjects * alphas, 3, H, W], subject-major
    images: list[torch.Tensor]  # the same as uint8


# ----------------------------------------------------------------------------- compute


def data_directions(mu: torch.Tensor, basis: str) -> Directions:
    if basis == "axis":
        spread = mu.std(0)
        order = torch.argsort(spread, descending=True)
        return Directions(basis, torch.eye(mu.shape[1], device=mu.device)[order], spread[order], order)
    eigenvalues, axes = principal_axes(mu - mu.mean(0))
    return Directions(basis, axes.T.contiguous(), eigenvalues.sqrt(), torch.arange(len(eigenvalues), device=mu.device))


def candidate_positions(settings: AmplifySettings, directions: Directions, active: int) -> list[int]:
    """The directions asked for by --components, else the most spread ones."""
    if not settings.components:
        return list(range(min(settings.candidates, max(active, settings.count))))
    wanted = parse_ints(settings.components, "--components")
    bad = [c for c in wanted if not 0 <= c < len(directions.index)]
    if bad:
        raise EditError(f"--components {bad}: outside 0..{len(directions.index) - 1}")
    position = {int(i): p for p, i in enumerate(directions.index.tolist())}
    return [position[c] for c in wanted]


def probe_effects(ctx: EditContext, settings: AmplifySettings, directions: Directions,
                  candidates: list[int]) -> tuple[torch.Tensor, list[float], int]:
    """Judge effects [candidates, attributes] and pixel changes between -A and +A std on valid images."""
    valid = ctx.split("valid")
    rows = choose_rows(np.arange(len(valid)), min(settings.probe, len(valid)), settings.seed + 1, "valid images")
    mu = ctx.encode_images(ctx.images("valid", rows))
    effects, pixel_change = [], []
    for c in candidates:
        step = settings.alpha_max * directions.spread[c] * directions.vectors[c]
        low, high = ctx.decode_batched(mu - step), ctx.decode_batched(mu + step)
        effects.append((ctx.judge_probs(high) - ctx.judge_probs(low)).mean(0))
        pixel_change.append(float((to_images(high).float() - to_images(low).float()).abs().mean()))
    return torch.stack(effects), pixel_change, len(rows)


def choose_distinct(effects: torch.Tensor, count: int, max_similarity: float) -> list[int]:
    """Greedy by score, skipping a direction whose leading attribute is taken or whose whole effect vector is close
    to a chosen one's (two "smile" directions would show the same thing twice)."""
    scores, leaders = effects.abs().max(1)
    ranked = torch.argsort(scores, descending=True).tolist()
    unit = torch.nn.functional.normalize(effects, dim=1)
    chosen, seen = [], set()
    for k in ranked:
        similar = any(abs(float(unit[k] @ unit[j])) > max_similarity for j in chosen)
        if int(leaders[k]) not in seen and not similar:
            chosen.append(k)
            seen.add(int(leaders[k]))
        if len(chosen) == count:
            break
    # Too few distinct effects: fill up by score alone.
    return chosen + [k for k in ranked if k not in chosen][:count - len(chosen)]


def discover(ctx: EditContext, settings: AmplifySettings, mu_train: torch.Tensor, log: Callable[[str], None]
             ) -> Discovery:
    directions = data_directions(mu_train, settings.basis)
    active = int((directions.spread.square() > ACTIVE_THRESHOLD).sum())
    candidates = candidate_positions(settings, directions, active)
    log(f"{settings.basis} basis: {active} of {len(directions.spread)} directions have data variance > "
        f"{ACTIVE_THRESHOLD}; probing {len(candidates)}")
    effects, pixel_change, probe_images = probe_effects(ctx, settings, directions, candidates)
    chosen = (list(range(len(candidates))) if settings.components
              else choose_distinct(effects, settings.count, settings.max_similarity))
    return Discovery(directions, active, candidates, probe_images, effects, pixel_change, chosen)


def sweep_subjects(ctx: EditContext, settings: AmplifySettings, discovery: Discovery) -> Sweeps:
    test = ctx.split("test")
    rows = choose_rows(np.arange(len(test)), settings.subjects, settings.seed, "test images")
    mu = ctx.encode_images(ctx.images("test", rows))
    alpha_in_std = torch.linspace(-settings.alpha_max, settings.alpha_max, settings.num_alphas, device=ctx.device)
    decoded = []
    for k in discovery.chosen:
        c = discovery.candidates[k]
        alphas = alpha_in_std * discovery.directions.spread[c]
        z = (mu[:, None, :] + alphas[None, :, None] * discovery.directions.vectors[c]).flatten(0, 1)
        decoded.append(ctx.decode_batched(z))
    return Sweeps(rows, alpha_in_std, ctx.decode_batched(mu), decoded, [to_images(x) for x in decoded])


# ----------------------------------------------------------------------------- measure


def train_correlation(mu_train: torch.Tensor, direction: torch.Tensor, centred_labels: torch.Tensor) -> torch.Tensor:
    """Correlation over the train split between the coordinate along `direction` and each attribute label."""
    coordinate = (mu_train - mu_train.mean(0)) @ direction
    return (coordinate[:, None] * centred_labels).mean(0) / (
        coordinate.std(unbiased=False) * centred_labels.std(0, unbiased=False)).clamp_min(1e-8)


def measure_direction(ctx: EditContext, settings: AmplifySettings, discovery: Discovery, k: int, sweeps: Sweeps,
                      i: int, corr: torch.Tensor, p_recon: torch.Tensor) -> dict:
    """What the k-th candidate, the i-th direction shown, does to the subjects, judged against the reconstruction
    (p_recon: the judge on it)."""
    names, c, effects = ctx.names, discovery.candidates[k], discovery.effects[k]
    probs = ctx.judge_probs(sweeps.decoded[i]).view(settings.subjects, settings.num_alphas, -1)
    sweep = sweeps.images[i].view(settings.subjects, settings.num_alphas, *sweeps.images[i].shape[1:])
    top = torch.argsort(effects.abs(), descending=True)[:3].tolist()
    leader = top[0]
    # alpha = 0 is sampled only for an odd number of alphas, so the two ends are compared with dec(mu).
    ends = {end: edit_metrics(to_images(sweeps.reconstruction), sweep[:, j], p_recon, probs[:, j], exclude=[leader])
            for end, j in (("low", 0), ("high", settings.num_alphas - 1))}
    spread = discovery.directions.spread[c]
    return {
        "direction": discovery.directions.label(c), "basis": settings.basis,
        "index": int(discovery.directions.index[c]), "figure": discovery.directions.figure(c),
        "data_std": float(spread), "alphas": (sweeps.alpha_in_std * spread).tolist(),
        "alpha_in_std": sweeps.alpha_in_std.tolist(), "score": float(effects.abs().max()),
        "pixel_change_between_ends": discovery.pixel_change[k],
        "moves": [{"attribute": names[a], "judge_prob_change": float(effects[a]), "train_correlation": float(corr[a])}
                  for a in top],
        "top_correlated_attributes": [{"attribute": names[a], "train_correlation": float(corr[a])}
                                      for a in torch.argsort(corr.abs(), descending=True)[:3].tolist()],
        "judge_prob_of_leading_attribute_by_alpha": probs[:, :, leader].mean(0).tolist(),
        "ends_vs_reconstruction": ends,
    }


def measure(ctx: EditContext, settings: AmplifySettings, discovery: Discovery, sweeps: Sweeps,
            mu_train: torch.Tensor) -> dict:
    train_labels = torch.as_tensor(ctx.split("train").attributes, dtype=torch.float32, device=ctx.device)
    centred_labels = train_labels - train_labels.mean(0)
    p_recon = ctx.judge_probs(sweeps.reconstruction)
    components = []
    for i, k in enumerate(discovery.chosen):
        direction = discovery.directions.vectors[discovery.candidates[k]]
        corr = train_correlation(mu_train, direction, centred_labels)
        components.append(measure_direction(ctx, settings, discovery, k, sweeps, i, corr, p_recon))
    scores, leaders = discovery.effects.abs().max(1)
    ranking = [{"direction": discovery.directions.label(c), "score": float(scores[k]),
                "leading_attribute": ctx.names[int(leaders[k])],
                "judge_prob_change": float(discovery.effects[k][int(leaders[k])])}
               for k, c in sorted(enumerate(discovery.candidates), key=lambda kc: -float(scores[kc[0]]))]
    test = ctx.split("test")
    return {"basis": settings.basis, "active_directions": discovery.active, "alpha_max_std": settings.alpha_max,
            "probe_images": discovery.probe_images, "subjects": [str(test.keys[r]) for r in sweeps.subject_rows],
            "components": components, "ranking": ranking[:20]}


# ----------------------------------------------------------------------------- draw


def draw(out: Path, settings: AmplifySettings, report: dict, sweeps: Sweeps) -> None:
    components = report["components"]
    for component, images in zip(components, sweeps.images):
        move = component["moves"][0]
        save_grid(out / component["figure"], images, rows=settings.subjects,
                  title=f"{component['direction']} + alpha: moves {move['attribute']} "
                        f"({move['judge_prob_change']:+.2f} judge prob, "
                        f"-{settings.alpha_max:g} to +{settings.alpha_max:g} std)",
                  row_labels=[f"test {key}" for key in report["subjects"]],
                  col_labels=[f"{a:+.2f}" for a in component["alphas"]], scale=GRID_SCALE)
    save_effect_curves(out / "amplify_curves.png", [c["alpha_in_std"] for c in components],
                       [c["judge_prob_of_leading_attribute_by_alpha"] for c in components],
                       [f"{c['direction']}: {c['moves'][0]['attribute']}" for c in components],
                       xlabel="alpha (std of the data along the direction)",
                       ylabel="judge probability (mean over subjects)",
                       title="Feature amplification: the judge's probability of the attribute each direction moves")


@torch.no_grad()
def run(ctx: EditContext, settings: AmplifySettings, out: Path, log: Callable[[str], None] = print) -> dict:
    """Discover and sweep the directions, measure them with the judge, draw the grids; returns the report."""
    mu_train = ctx.latents("train", log)
    discovery = discover(ctx, settings, mu_train, log)
    sweeps = sweep_subjects(ctx, settings, discovery)
    report = measure(ctx, settings, discovery, sweeps, mu_train)
    draw(out, settings, report, sweeps)
    return report
