"""Label guidance: optimise z so the guide classifier assigns a new label to dec(z), changing little else.

For each subject (mu, its reconstruction r = dec(mu), and the guide's probabilities p0 = guide(r)):

    loss(z) = BCE(guide_t(dec z), target)                          # the change asked for
            + w_other  * mean_{a != t} BCE(guide_a(dec z), p0_a)   # keep the other 39 predictions
            + w_image  * mean (dec z - r)^2                        # keep the picture (model units, [-1, 1])
            + w_latent * mean (z - mu)^2                           # stay near the subject in latent space

minimised with Adam from z = mu. The guide sees dec(z) and its mirror image and averages the two logits, so a
change must read the same both ways round (a cheap guard against adversarial pixel patterns; `--views eot` adds a
randomly shifted and blurred view each step). A subject stops at the first step where the guide's probability of
the target label reaches `--target-prob`: the smallest edit that convinces the guide, not the largest. The
judge, trained separately, then scores the result. `--latent-metric whitened` optimises u in z = mu + u S
instead (S: principal axes of the train mu scaled by their std), so steps follow the directions in which faces
vary and the latent term is the Mahalanobis distance |u|^2.

Baseline: the mean-difference direction (mean mu of train positives minus negatives), added (or subtracted) with
the same latent step length the guided edit took for that subject (`matched`), and with the whole difference
(`full`): how far the plain latent arithmetic of the seeds gets at equal cost.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edit.common import (GRID_SCALE, Change, EditContext, EditError, choose_rows, edit_metrics,
                         mean_difference_direction, parse_changes, principal_axes, to_images)
from common.plots import save_grid, save_metric_bars


@dataclass
class GuideSettings:
    steps: int = 200
    lr: float = 0.05
    target_prob: float = 0.95
    w_other: float = 1.0
    w_image: float = 5.0
    w_latent: float = 0.05
    views: str = "flip"  # none | flip | eot (flip + a random shift/blur view)
    latent_metric: str = "euclidean"  # euclidean | whitened (Mahalanobis under the train mu covariance)
    seed: int = 0


def data_basis(mu: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """S [d, d] with z = mu + u S mapping whitened coordinates u to latent steps: rows are the principal axes of
    mu over the train split scaled by their std (eigenvalues floored at floor * the largest)."""
    eigenvalues, axes = principal_axes(mu - mu.mean(0))
    eigenvalues = eigenvalues.clamp_min(floor * eigenvalues[0])
    # Rows from the least to the most variance: the order is immaterial to the edit but sets the rounding of u S,
    # and this is the order earlier reports were made with.
    return (axes * eigenvalues.sqrt()).T.flip(0).contiguous()


def guided_latents(ctx: EditContext, mu: torch.Tensor, reconstruction: torch.Tensor, targets: torch.Tensor,
                   target_values: torch.Tensor, settings: GuideSettings,
                   basis: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-subject guided z [N, d]; also the guide's final target probability [N] and the step each stopped at."""
    from edit.classifier import augment

    guide = ctx.guide
    n = len(mu)
    rows = torch.arange(n, device=mu.device)
    generator = torch.Generator(mu.device).manual_seed(settings.seed)

    def logits_of(x, random_view=True):
        x = x.clamp(-1, 1)
        if settings.views == "none":
            return guide(x)
        views = [x, x.flip(3)]
        if settings.views == "eot" and random_view:
            views.append(augment(x, generator, blur=1.5))
        return torch.stack([guide(v) for v in views]).mean(0)

    with torch.no_grad():
        p0 = torch.sigmoid(logits_of(reconstruction, random_view=False))
    others = torch.ones_like(p0, dtype=torch.bool)
    others[rows, targets] = False
    # The optimised variable: z itself, or whitened coordinates u with z = mu + u S (Adam's per-coordinate steps
    # then follow the directions in which faces actually vary, and |u|^2 is the Mahalanobis distance).
    u = torch.zeros_like(mu).requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=settings.lr)
    best = mu.clone()
    done = torch.zeros(n, dtype=torch.bool, device=mu.device)
    stopped = [settings.steps] * n
    final_prob = torch.zeros(n, device=mu.device)
    for step in range(settings.steps + 1):
        z = mu + (u if basis is None else u @ basis)
        x = ctx.decode(z)
        logits = logits_of(x)
        target_logit = logits[rows, targets]
        with torch.no_grad():  # has the current z (before this step's update) reached the target?
            prob = torch.sigmoid(target_logit)
            prob_of_target = torch.where(target_values > 0, prob, 1 - prob)
            reached = (prob_of_target >= settings.target_prob) & ~done
            best[reached] = z.detach()[reached]
            final_prob = torch.where(done, final_prob, prob_of_target)
            for i in reached.nonzero().flatten().tolist():
                stopped[i] = step
            done |= reached
        if bool(done.all()) or step == settings.steps:
            break
        target_loss = F.binary_cross_entropy_with_logits(target_logit, target_values, reduction="none")
        other_loss = (F.binary_cross_entropy_with_logits(logits, p0, reduction="none") * others).sum(1) / others.sum(1)
        image_loss = (x - reconstruction).square().flatten(1).mean(1)
        latent_loss = u.square().mean(1)
        per_subject = (target_loss + settings.w_other * other_loss + settings.w_image * image_loss
                       + settings.w_latent * latent_loss)
        optimizer.zero_grad(set_to_none=True)
        (per_subject * (~done)).sum().backward()
        optimizer.step()
    best[~done] = (mu + (u if basis is None else u @ basis)).detach()[~done]
    return best, final_prob, stopped


def run(ctx: EditContext, args, out, log) -> dict:
    if ctx.guide is None:
        raise EditError("guide: --guide CLASSIFIER is required (the classifier that steers the edit)")
    names = ctx.names
    changes: list[Change] = parse_changes(args.changes, names)
    train = ctx.split("train")
    test = ctx.split("test")
    mu_train = ctx.latents("train", log)

    rows_per_change = []
    for k, change in enumerate(changes):
        eligible = np.flatnonzero(test.attributes[:, change.index] != change.target)
        rows_per_change.append(choose_rows(eligible, args.subjects, args.seed + k,
                                           f"test images {'without' if change.target else 'with'} {change.attribute}"))
    rows = np.concatenate(rows_per_change)
    images = ctx.images("test", rows)
    mu = ctx.encode_images(images)
    reconstruction = ctx.decode_batched(mu)
    targets = torch.tensor([c.index for c in changes for _ in range(args.subjects)], device=ctx.device)
    target_values = torch.tensor([float(c.target) for c in changes for _ in range(args.subjects)], device=ctx.device)

    log(f"guiding {len(rows)} latents ({len(changes)} changes x {args.subjects} subjects), "
        f"up to {args.steps} Adam steps")
    settings = GuideSettings(args.steps, args.lr, args.target_prob, args.w_other, args.w_image, args.w_latent,
                             args.views, args.latent_metric, args.seed)
    basis = data_basis(mu_train) if settings.latent_metric == "whitened" else None
    with torch.enable_grad():
        z_guided, guide_prob, stopped = guided_latents(ctx, mu, reconstruction, targets, target_values, settings, basis)

    # Baselines along the mean-difference direction of each change's attribute.
    step_length = (z_guided - mu).norm(dim=1)
    direction = torch.stack([mean_difference_direction(mu_train, train.attributes[:, c.index], c.attribute)
                             for c in changes for _ in range(args.subjects)])
    sign = (2 * target_values - 1)[:, None]
    z_matched = mu + sign * step_length[:, None] * direction / direction.norm(dim=1, keepdim=True)
    z_full = mu + sign * direction

    recon_images = to_images(reconstruction)
    p_recon = ctx.judge_probs(reconstruction)
    results = {}
    decoded_images = {}
    for method, z in (("guided", z_guided), ("mean_difference_matched", z_matched), ("mean_difference_full", z_full)):
        decoded = ctx.decode_batched(z)
        decoded_images[method] = to_images(decoded)
        results[method] = (ctx.judge_probs(decoded), (z - mu).norm(dim=1))

    # Judge accuracy on reconstructions of the subjects' own labels: how far to trust the judge on VAE outputs.
    labels = torch.as_tensor(test.attributes[rows], device=ctx.device).float()
    report_changes = []
    for k, change in enumerate(changes):
        part = slice(k * args.subjects, (k + 1) * args.subjects)
        t = change.index

        def success(p):
            return (p[part, t] > 0.5) if change.target else (p[part, t] < 0.5)

        entry = {"change": change.label, "attribute": change.attribute, "target": change.target,
                 "subjects": [str(test.keys[r]) for r in rows_per_change[k]],
                 "reconstruction": {"judge_success": int(success(p_recon).sum()),
                                    "judge_target_prob": float(p_recon[part, t].mean())},
                 "guide_target_prob_reached": float(guide_prob[part].mean()),
                 "guide_reached_target_prob": int((guide_prob[part] >= args.target_prob).sum()),
                 "steps_used": stopped[part]}
        for method, (p, distance) in results.items():
            entry[method] = {
                "judge_success": int(success(p).sum()), "judge_success_rate": float(success(p).float().mean()),
                "judge_target_prob": float(p[part, t].mean()), "latent_distance": float(distance[part].mean()),
                **edit_metrics(recon_images[part], decoded_images[method][part], p_recon[part], p[part], exclude=[t])}
        report_changes.append(entry)
        columns = [f"{test.keys[r]}" for r in rows_per_change[k]]
        grid = torch.cat([images[part].cpu(), recon_images[part], decoded_images["guided"][part],
                          decoded_images["mean_difference_matched"][part]])
        g, b = entry["guided"], entry["mean_difference_matched"]
        save_grid(out / f"guide_{change.slug}.png", grid, rows=4,
                  title=f"{change.label}: judge success guided {g['judge_success']}/{args.subjects}, baseline "
                        f"{b['judge_success']}/{args.subjects}; other attributes |dp| "
                        f"{g['other_attributes_mean_abs_change']:.3f}"
                        f" vs {b['other_attributes_mean_abs_change']:.3f}",
                  row_labels=["original", "reconstruction", "guided (ours)", "mean-diff, same step"],
                  col_labels=columns, scale=GRID_SCALE)
    overview = torch.cat([torch.cat([recon_images[k * args.subjects:(k + 1) * args.subjects],
                                     decoded_images["guided"][k * args.subjects:(k + 1) * args.subjects]])
                          for k in range(len(changes))])
    save_grid(out / "guide_overview.png", overview, rows=2 * len(changes),
              title="Label guidance: reconstruction, then the guided edit, for each change",
              row_labels=[label for c in changes for label in ("reconstruction", c.label)], scale=GRID_SCALE)
    groups = [c.label for c in changes]
    save_metric_bars(out / "guide_comparison.png", groups,
                     {"guided: judge success": [e["guided"]["judge_success_rate"] for e in report_changes],
                      "mean-diff same step: judge success": [e["mean_difference_matched"]["judge_success_rate"]
                                                             for e in report_changes],
                      "guided: other |dp|": [e["guided"]["other_attributes_mean_abs_change"] for e in report_changes],
                      "mean-diff same step: other |dp|": [
                          e["mean_difference_matched"]["other_attributes_mean_abs_change"] for e in report_changes]},
                     ylabel="rate / mean |delta p|", title="Guided edit vs mean-difference baseline (judge classifier)")
    judge_accuracy = ((p_recon > 0.5).float() == labels).float().mean(0)
    # The judge on reconstructions of real test images that already have the target label: the success rate an
    # edit as good as the VAE's own rendering of the attribute would get (the ceiling the numbers above face).
    ceiling = {}
    for k, change in enumerate(changes):
        having = np.flatnonzero(test.attributes[:, change.index] == change.target)[:args.reference_images]
        if len(having):
            p = ctx.judge_probs(ctx.decode_batched(ctx.encode_images(ctx.images("test", having))))[:, change.index]
            judged = (p > 0.5) if change.target else (p < 0.5)
            ceiling[change.label] = {"images": int(len(having)), "judge_success_rate": float(judged.float().mean())}
    summary = {}
    for method in results:
        summary[method] = {key: float(np.mean([e[method][key] for e in report_changes]))
                           for key in ("judge_success_rate", "other_attributes_mean_abs_change",
                                       "psnr_to_reconstruction_db", "rmse_to_reconstruction", "latent_distance")}
    return {"changes": report_changes, "summary": summary,
            "judge_accuracy_on_subject_reconstructions": {c.attribute: float(judge_accuracy[c.index]) for c in changes},
            "judge_on_reconstructions_that_have_the_target": ceiling,
            "settings": asdict(settings)}
