"""Feature amplification: move test faces along one latent direction, a latent component (z_i + alpha, the
default) or a principal axis of mu over train (z + alpha v). The sweep's ends are the train split's range of mu
along the direction (relative to its mean), so every face stays where the data lives.

Directions are ranked by what a person would see: how much the decoded face changes between the two ends in the
region that changes (grey levels), times how far the judge's probability of the attribute the change looks like
moves (README, Editing). Besides the sweeps, the report says how the VAE spreads its information over the
components (KL per component), which decides whether any single component can show a visible change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common.plots import save_effect_curves, save_grid
from edit.common import (GRID_SCALE, EditContext, EditError, EditSettings, change_region, choose_rows, edit_metrics,
                         grey_change, parse_ints, principal_axes, to_images)
from model.metrics import kl_diag_gaussian_per_dim, to_model_range
from model.split_pass import ACTIVE_THRESHOLD

NAMED_CHANGE = 0.4  # a subject counts as showing the named attribute when the judge's probability moves this much


@dataclass
class AmplifySettings(EditSettings):
    basis: str = field(default="axis", metadata={
        "help": "axis: single latent components (z_i + alpha); pca: principal axes of mu over train",
        "choices": ("axis", "pca")})
    count: int = field(default=4, metadata={"help": "directions to show"})
    components: str = field(default="", metadata={"help": "show these latent indices / PCs instead of discovering"})
    candidates: int = field(default=64, metadata={"help": "directions probed (largest data spread first; 0: all)"})
    probe: int = field(default=12, metadata={"help": "valid images the discovery probes with"})
    # The whole range reaches changes the 1st..99th percentiles do not (real sample, latent 256: the judge names
    # the four chosen changes on 4, 2, 6, 1 of 8 subjects against 2, 0, 0, 1), and stays where the data lives.
    alpha_quantile: float = field(default=0.0, metadata={
        "help": "the sweep runs between the train split's q and 1-q quantiles of mu along the direction, less its "
                "mean (0: its minimum and maximum)"})
    num_alphas: int = 10
    max_similarity: float = field(default=0.6, metadata={
        "help": "skip a direction whose judge-effect vector has a larger |cosine| with a chosen one's"})
    usage_images: int = field(default=1000, metadata={
        "help": "valid images over which the KL per component is measured"})


@dataclass
class Directions:
    """Unit directions [K, d], most spread first; the data's std along each [K]; which latent index (axis
    basis) or principal axis (pca basis) each one is [K]; and the sweep's ends, alpha_low < 0 < alpha_high [K]."""
    basis: str
    vectors: torch.Tensor
    spread: torch.Tensor
    index: torch.Tensor
    alpha_low: torch.Tensor
    alpha_high: torch.Tensor

    def label(self, c: int) -> str:
        return f"{'latent' if self.basis == 'axis' else 'PC'} {int(self.index[c])}"

    def figure(self, c: int) -> str:
        return f"amplify_{'z' if self.basis == 'axis' else 'pc'}{int(self.index[c])}.png"


@dataclass
class Probe:
    """What each probed direction does between its two ends to the probe images."""
    effects: torch.Tensor  # [candidates, attributes]: mean judge probability change, low end -> high end
    named_share: torch.Tensor  # [candidates]: share of images whose leading attribute moves >= NAMED_CHANGE its way
    region_change: torch.Tensor  # [candidates]: mean |pixel change| between the ends in the changing region
    region_area: torch.Tensor  # [candidates]: the changing region's share of the image
    whole_change: torch.Tensor  # [candidates]: mean |pixel change| between the ends over the whole image
    images: int

    @property
    def leaders(self) -> torch.Tensor:
        return self.effects.abs().argmax(1)

    @property
    def scores(self) -> torch.Tensor:
        """Visible and nameable: grey levels changed in the region times the judge's move of the leading attribute."""
        return self.region_change * self.effects.abs().amax(1)


@dataclass
class Discovery:
    directions: Directions
    active: int  # directions along which the data varies more than ACTIVE_THRESHOLD
    candidates: list[int]  # positions in `directions` that were probed
    probe: Probe
    chosen: list[int]  # positions in `candidates` to show, best first


@dataclass
class Sweeps:
    """The subjects moved along each chosen direction: decoded (model range, for the judge) and as images."""
    subject_rows: np.ndarray
    alphas: list[torch.Tensor]  # per chosen direction [num_alphas], latent units
    reconstruction: torch.Tensor  # dec(mu) of the subjects
    decoded: list[torch.Tensor]  # per chosen direction [subjects * alphas, 3, H, W], subject-major
    images: list[torch.Tensor]  # the same as uint8


# ----------------------------------------------------------------------------- compute


def data_directions(mu: torch.Tensor, basis: str, quantile: float) -> Directions:
    """The basis's unit directions with the data's spread and the sweep's ends along each."""
    centred = mu - mu.mean(0)
    if basis == "axis":
        spread = mu.std(0)
        order = torch.argsort(spread, descending=True)
        vectors, spread, index = torch.eye(mu.shape[1], device=mu.device)[order], spread[order], order
    else:
        eigenvalues, axes = principal_axes(centred)
        vectors, spread = axes.T.contiguous(), eigenvalues.sqrt()
        index = torch.arange(len(eigenvalues), device=mu.device)
    coordinates = centred @ vectors.T
    ends = torch.quantile(coordinates, torch.tensor([quantile, 1 - quantile], device=mu.device), dim=0)
    return Directions(basis, vectors, spread, index, ends[0].clamp_max(0), ends[1].clamp_min(0))


def candidate_positions(settings: AmplifySettings, directions: Directions, active: int) -> list[int]:
    """The directions asked for by --components, else the most spread ones."""
    if not settings.components:
        limit = settings.candidates if settings.candidates > 0 else len(directions.index)
        return list(range(min(limit, max(active, settings.count))))
    wanted = parse_ints(settings.components, "--components")
    bad = [c for c in wanted if not 0 <= c < len(directions.index)]
    if bad:
        raise EditError(f"--components {bad}: outside 0..{len(directions.index) - 1}")
    position = {int(i): p for p, i in enumerate(directions.index.tolist())}
    return [position[c] for c in wanted]


def end_latents(mu: torch.Tensor, directions: Directions, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    vector = directions.vectors[c]
    return mu + directions.alpha_low[c] * vector, mu + directions.alpha_high[c] * vector


def probe_directions(ctx: EditContext, settings: AmplifySettings, directions: Directions,
                     candidates: list[int]) -> Probe:
    """Judge effects and pixel changes between the two ends of each candidate on valid images."""
    valid = ctx.split("valid")
    rows = choose_rows(np.arange(len(valid)), min(settings.probe, len(valid)), settings.seed + 1, "valid images")
    mu = ctx.encode_images(ctx.images("valid", rows))
    effects, named, region_change, region_area, whole = [], [], [], [], []
    for c in candidates:
        low, high = (ctx.decode_batched(z) for z in end_latents(mu, directions, c))
        delta = ctx.judge_probs(high) - ctx.judge_probs(low)
        effect = delta.mean(0)
        leader = int(effect.abs().argmax())
        named.append(float((delta[:, leader] * effect[leader].sign() >= NAMED_CHANGE).float().mean()))
        change = grey_change(to_images(low), to_images(high))
        region = change_region(change.mean(0))
        effects.append(effect)
        region_change.append(float(change[:, region].mean()))
        region_area.append(float(region.float().mean()))
        whole.append(float(change.mean()))
    return Probe(torch.stack(effects), torch.tensor(named), torch.tensor(region_change), torch.tensor(region_area),
                 torch.tensor(whole), len(rows))


def choose_distinct(effects: torch.Tensor, scores: torch.Tensor, count: int, max_similarity: float) -> list[int]:
    """Greedy by score, skipping a direction whose leading attribute is taken or whose whole effect vector is close
    to a chosen one's (two "smile" directions would show the same thing twice)."""
    leaders = effects.abs().argmax(1)
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
    directions = data_directions(mu_train, settings.basis, settings.alpha_quantile)
    active = int((directions.spread.square() > ACTIVE_THRESHOLD).sum())
    candidates = candidate_positions(settings, directions, active)
    log(f"{settings.basis} basis: {active} of {len(directions.spread)} directions have data variance > "
        f"{ACTIVE_THRESHOLD}; probing {len(candidates)}")
    probe = probe_directions(ctx, settings, directions, candidates)
    chosen = (list(range(len(candidates))) if settings.components
              else choose_distinct(probe.effects, probe.scores, settings.count, settings.max_similarity))
    return Discovery(directions, active, candidates, probe, chosen)


def sweep_subjects(ctx: EditContext, settings: AmplifySettings, discovery: Discovery) -> Sweeps:
    test = ctx.split("test")
    rows = choose_rows(np.arange(len(test)), settings.subjects, settings.seed, "test images")
    mu = ctx.encode_images(ctx.images("test", rows))
    steps = torch.linspace(0, 1, settings.num_alphas, device=ctx.device)
    alphas, decoded = [], []
    for k in discovery.chosen:
        c, directions = discovery.candidates[k], discovery.directions
        alpha = directions.alpha_low[c] + steps * (directions.alpha_high[c] - directions.alpha_low[c])
        z = (mu[:, None, :] + alpha[None, :, None] * directions.vectors[c]).flatten(0, 1)
        alphas.append(alpha)
        decoded.append(ctx.decode_batched(z))
    return Sweeps(rows, alphas, ctx.decode_batched(mu), decoded, [to_images(x) for x in decoded])


# ----------------------------------------------------------------------------- measure


def train_correlation(mu_train: torch.Tensor, direction: torch.Tensor, centred_labels: torch.Tensor) -> torch.Tensor:
    """Correlation over the train split between the coordinate along `direction` and each attribute label."""
    coordinate = (mu_train - mu_train.mean(0)) @ direction
    return (coordinate[:, None] * centred_labels).mean(0) / (
        coordinate.std(unbiased=False) * centred_labels.std(0, unbiased=False)).clamp_min(1e-8)


def measure_direction(ctx: EditContext, settings: AmplifySettings, discovery: Discovery, k: int, sweeps: Sweeps,
                      i: int, corr: torch.Tensor, p_recon: torch.Tensor) -> dict:
    """What the k-th candidate, the i-th direction shown, does to the subjects, judged against the reconstruction
    (p_recon: the judge on it): the judge's probability of the attribute it is named after (its leading
    attribute on the probe) at the two ends, and how much the ends differ from dec(mu) where the face changes."""
    names, c, probe = ctx.names, discovery.candidates[k], discovery.probe
    effects, named = probe.effects[k], int(probe.leaders[k])
    sign = 1.0 if float(effects[named]) >= 0 else -1.0
    probs = ctx.judge_probs(sweeps.decoded[i]).view(settings.subjects, settings.num_alphas, -1)
    sweep = sweeps.images[i].view(settings.subjects, settings.num_alphas, *sweeps.images[i].shape[1:])
    reconstruction = to_images(sweeps.reconstruction)
    region = change_region(grey_change(sweep[:, 0], sweep[:, -1]).mean(0))
    named_change = probs[:, -1, named] - probs[:, 0, named]
    ends = {}
    for end, j in (("low", 0), ("high", settings.num_alphas - 1)):
        change = grey_change(reconstruction, sweep[:, j])
        ends[end] = {"region_mean_abs_change": float(change[:, region].mean()),
                     "mean_abs_change": float(change.mean()),
                     **edit_metrics(reconstruction, sweep[:, j], p_recon, probs[:, j], exclude=[named])}
    spread, alphas = discovery.directions.spread[c], sweeps.alphas[i]
    top = torch.argsort(effects.abs(), descending=True)[:3].tolist()
    return {
        "direction": discovery.directions.label(c), "basis": settings.basis,
        "index": int(discovery.directions.index[c]), "figure": discovery.directions.figure(c),
        "data_std": float(spread), "alphas": alphas.tolist(), "alpha_in_std": (alphas / spread).tolist(),
        "score": float(probe.scores[k]), "pixel_change_between_ends": float(probe.whole_change[k]),
        "named_attribute": names[named], "named_direction": "up" if sign > 0 else "down",
        "judge_named_change_per_subject": named_change.tolist(),
        "judge_named_subjects": int((named_change * sign >= NAMED_CHANGE).sum()),
        "region_area_share": float(region.float().mean()),
        "region_change_between_ends": float(grey_change(sweep[:, 0], sweep[:, -1])[:, region].mean()),
        "moves": [{"attribute": names[a], "judge_prob_change": float(effects[a]), "train_correlation": float(corr[a])}
                  for a in top],
        "top_correlated_attributes": [{"attribute": names[a], "train_correlation": float(corr[a])}
                                      for a in torch.argsort(corr.abs(), descending=True)[:3].tolist()],
        "judge_prob_of_named_attribute_by_alpha": probs[:, :, named].mean(0).tolist(),
        "ends_vs_reconstruction": ends,
    }


def share_curve(values: torch.Tensor) -> dict:
    """How concentrated non-negative per-direction amounts are: how many of the largest carry half and 90% of the
    total, their effective number exp(entropy of the shares), and the four largest shares."""
    ordered = values.clamp_min(0).sort(descending=True).values
    share = ordered / ordered.sum().clamp_min(1e-12)
    cumulative = torch.cumsum(share, 0)
    entropy = -(share * share.clamp_min(1e-12).log()).sum()
    return {"directions_for_half": int((cumulative < 0.5).sum()) + 1,
            "directions_for_90_percent": int((cumulative < 0.9).sum()) + 1,
            "effective_number": float(entropy.exp()), "largest_shares": share[:4].tolist()}


def latent_usage(ctx: EditContext, settings: AmplifySettings, discovery: Discovery) -> dict:
    """How the VAE spreads what it encodes over the directions: the KL per latent component over valid images
    (axis basis; a point-latent model has none), the variance of mu per direction, and the probed directions'
    visible change per unit of the data's std."""
    directions, probe = discovery.directions, discovery.probe
    usage: dict = {}
    if settings.basis == "axis":
        valid = ctx.split("valid")
        images = ctx.images("valid", np.arange(min(settings.usage_images, len(valid))))
        kl, posterior_std = [], []
        for part in images.split(ctx.batch_size):
            mu, logvar = ctx.vae.encode(to_model_range(part))
            if logvar is None:
                break
            kl.append(kl_diag_gaussian_per_dim(mu, logvar))
            posterior_std.append(torch.exp(0.5 * logvar))
        if kl:
            per_component = torch.cat(kl).mean(0)
            usage["kl_nats_total"] = float(per_component.sum())
            usage["kl_per_component"] = {**share_curve(per_component),
                                         "largest_nats": per_component.sort(descending=True).values[:8].tolist()}
            # A diagonal posterior singles out the axes only where its variances differ between components; with
            # equal variances the objective barely changes under a rotation of z, and each component mixes factors.
            std = torch.cat(posterior_std).mean(0)
            usage["posterior_std_per_component"] = {"min": float(std.min()), "median": float(std.median()),
                                                    "max": float(std.max())}
            probed = directions.index[discovery.candidates]
            usage["probed_kl_nats"] = per_component[probed].tolist()
    # The variance of mu along the directions, for either basis: a single component's share against the
    # principal axes' shows how far the code's information is rotated away from the components.
    usage["variance_per_direction"] = share_curve(directions.spread.square())
    ranges = torch.stack([(directions.alpha_high[c] - directions.alpha_low[c]) / directions.spread[c]
                          for c in discovery.candidates]).cpu()
    usage["probed_region_change_per_std"] = (probe.region_change / ranges).tolist()
    usage["probed_range_in_std"] = ranges.tolist()
    return usage


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
    probe, directions = discovery.probe, discovery.directions
    ranking = [{"direction": directions.label(c), "score": float(probe.scores[k]),
                "leading_attribute": ctx.names[int(probe.leaders[k])],
                "judge_prob_change": float(probe.effects[k][int(probe.leaders[k])]),
                "judge_named_share": float(probe.named_share[k]),
                "region_change": float(probe.region_change[k]), "region_area_share": float(probe.region_area[k]),
                "pixel_change_between_ends": float(probe.whole_change[k])}
               for k, c in sorted(enumerate(discovery.candidates), key=lambda kc: -float(probe.scores[kc[0]]))]
    test = ctx.split("test")
    return {"basis": settings.basis, "active_directions": discovery.active, "alpha_quantile": settings.alpha_quantile,
            "alpha_max_std": max(max(abs(a) for a in c["alpha_in_std"]) for c in components),
            "named_change": NAMED_CHANGE, "probe_images": probe.images,
            "subjects": [str(test.keys[r]) for r in sweeps.subject_rows],
            "components": components, "ranking": ranking[:20],
            "latent_usage": latent_usage(ctx, settings, discovery)}


# ----------------------------------------------------------------------------- draw


def draw(out: Path, settings: AmplifySettings, report: dict, sweeps: Sweeps) -> None:
    components = report["components"]
    for component, images in zip(components, sweeps.images):
        high = component["ends_vs_reconstruction"]["high"]
        low = component["ends_vs_reconstruction"]["low"]
        save_grid(out / component["figure"], images, rows=settings.subjects,
                  title=f"{component['direction']} + alpha: {component['named_attribute']} (judge moves >= "
                        f"{NAMED_CHANGE:g} on {component['judge_named_subjects']}/{settings.subjects}); ends differ "
                        f"{low['region_mean_abs_change']:.0f}/{high['region_mean_abs_change']:.0f} grey levels "
                        f"where it changes",
                  row_labels=[f"test {key}" for key in report["subjects"]],
                  col_labels=[f"{a:+.2f}" for a in component["alphas"]], scale=GRID_SCALE)
    save_effect_curves(out / "amplify_curves.png", [c["alpha_in_std"] for c in components],
                       [c["judge_prob_of_named_attribute_by_alpha"] for c in components],
                       [f"{c['direction']}: {c['named_attribute']}" for c in components],
                       xlabel="alpha (std of the data along the direction)",
                       ylabel="judge probability (mean over subjects)",
                       title="Feature amplification: the judge's probability of the attribute each direction moves")


@torch.no_grad()
def run(ctx: EditContext, settings: AmplifySettings, out: Path, log: Callable[[str], None] = print) -> dict:
    """Discover and sweep the directions, measure them with the judge, draw the grids; returns the report."""
    if not 0 <= settings.alpha_quantile < 0.5:
        raise EditError(f"--alpha-quantile {settings.alpha_quantile}: expected a value in [0, 0.5)")
    mu_train = ctx.latents("train", log)
    discovery = discover(ctx, settings, mu_train, log)
    sweeps = sweep_subjects(ctx, settings, discovery)
    report = measure(ctx, settings, discovery, sweeps, mu_train)
    draw(out, settings, report, sweeps)
    return report
