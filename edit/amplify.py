"""Feature amplification: z'_c = z_c + alpha on one latent direction, and which directions are worth showing.

Directions are either the latent axes themselves (`--basis axis`: z'_i = z_i + alpha, the seed's definition) or
the principal axes of mu over the train split (`--basis pca`: z' = z + alpha * v_c). alpha runs over
`--num-alphas` values in [-A s_c, +A s_c], s_c the spread of the data along the direction (std of mu_i, or the
square root of the PCA eigenvalue), so every direction moves across the range the data actually occupies.

Discovery, measured rather than eyeballed: the `--candidates` directions with the largest spread are each moved
to -A s_c and +A s_c on `--probe` valid images; the judge's 40 probabilities are compared between the two ends.
A direction's effect on an attribute is the mean signed change over the probe images (a direction that
pushes the attribute up in some faces and down in others averages out), its score the largest such effect.
The `--count` best directions with distinct leading attributes and dissimilar effect vectors (cosine at most
`--max-similarity`) are shown; the report also gives each one's
correlation with the attribute labels over the train split.
"""
from __future__ import annotations

import numpy as np
import torch

from edit.common import (GRID_SCALE, EditContext, EditError, choose_rows, edit_metrics, parse_ints,
                         principal_axes, to_images)
from common.plots import save_effect_curves, save_grid
from model.split_pass import ACTIVE_THRESHOLD


def directions(mu: torch.Tensor, basis: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit directions [K, d], spread of the data along each [K]), most spread first."""
    if basis == "axis":
        spread = mu.std(0)
        order = torch.argsort(spread, descending=True)
        return torch.eye(mu.shape[1], device=mu.device)[order], spread[order]
    eigenvalues, axes = principal_axes(mu - mu.mean(0))
    return axes.T.contiguous(), eigenvalues.sqrt()


def run(ctx: EditContext, args, out, log) -> dict:
    names = ctx.names
    mu_train = ctx.latents("train", log)
    basis_vectors, spread = directions(mu_train, args.basis)
    # For the axis basis, remember which latent index each sorted direction is.
    index_of = (torch.argsort(mu_train.std(0), descending=True) if args.basis == "axis"
                else torch.arange(len(spread), device=spread.device))
    active = int((spread.square() > ACTIVE_THRESHOLD).sum())
    if args.components:
        wanted = parse_ints(args.components, "--components")
        limit = mu_train.shape[1]
        bad = [c for c in wanted if not 0 <= c < limit]
        if bad:
            raise EditError(f"--components {bad}: outside 0..{limit - 1}")
        position = {int(i): p for p, i in enumerate(index_of.tolist())}
        candidates = [position[c] for c in wanted]
    else:
        candidates = list(range(min(args.candidates, max(active, args.count))))
    log(f"{args.basis} basis: {active} of {len(spread)} directions have data variance > {ACTIVE_THRESHOLD}; "
        f"probing {len(candidates)}")

    # Probe: judge probabilities at both ends of every candidate direction, on valid images.
    valid = ctx.split("valid")
    probe_rows = choose_rows(np.arange(len(valid)), min(args.probe, len(valid)), args.seed + 1, "valid images")
    mu_probe = ctx.encode_images(ctx.images("valid", probe_rows))
    effects, pixel_change = [], []
    for c in candidates:
        step = args.alpha_max * spread[c] * basis_vectors[c]
        low, high = ctx.decode_batched(mu_probe - step), ctx.decode_batched(mu_probe + step)
        effects.append((ctx.judge_probs(high) - ctx.judge_probs(low)).mean(0))
        pixel_change.append(float((to_images(high).float() - to_images(low).float()).abs().mean()))
    effects = torch.stack(effects)  # [candidates, 40]
    scores, leaders = effects.abs().max(1)

    if args.components:
        chosen = list(range(len(candidates)))
    else:
        # Greedy by score, skipping a direction whose leading attribute is taken or whose whole effect vector is
        # close to a chosen one's (two "smile" directions would show the same thing twice).
        unit = torch.nn.functional.normalize(effects, dim=1)
        chosen, seen = [], set()
        for k in torch.argsort(scores, descending=True).tolist():
            similar = any(abs(float(unit[k] @ unit[j])) > args.max_similarity for j in chosen)
            if int(leaders[k]) not in seen and not similar:
                chosen.append(k)
                seen.add(int(leaders[k]))
            if len(chosen) == args.count:
                break
        if len(chosen) < args.count:  # too few distinct effects: fill up by score alone
            rest = [k for k in torch.argsort(scores, descending=True).tolist() if k not in chosen]
            chosen += rest[:args.count - len(chosen)]

    test = ctx.split("test")
    subject_rows = choose_rows(np.arange(len(test)), args.subjects, args.seed, "test images")
    subjects = ctx.images("test", subject_rows)
    mu = ctx.encode_images(subjects)
    reconstruction = ctx.decode_batched(mu)
    p_recon = ctx.judge_probs(reconstruction)
    t_values = torch.linspace(-args.alpha_max, args.alpha_max, args.num_alphas, device=ctx.device)
    train_labels = torch.as_tensor(ctx.split("train").attributes, dtype=torch.float32, device=ctx.device)
    centred_labels = train_labels - train_labels.mean(0)

    components, curves, curve_labels, curve_alphas = [], [], [], []
    for k in chosen:
        c = candidates[k]
        direction = basis_vectors[c]
        alphas = t_values * spread[c]
        z = (mu[:, None, :] + alphas[None, :, None] * direction).flatten(0, 1)  # [subjects * alphas, d]
        decoded = ctx.decode_batched(z)
        images = to_images(decoded)
        probs = ctx.judge_probs(decoded).view(args.subjects, args.num_alphas, -1)
        # Correlation over the train split between the latent coordinate and each attribute label.
        coordinate = (mu_train - mu_train.mean(0)) @ direction
        corr = (coordinate[:, None] * centred_labels).mean(0) / (
            coordinate.std(unbiased=False) * centred_labels.std(0, unbiased=False)).clamp_min(1e-8)
        top = torch.argsort(effects[k].abs(), descending=True)[:3].tolist()
        leader = top[0]
        label = f"latent {int(index_of[c])}" if args.basis == "axis" else f"PC {c}"
        name = f"amplify_{'z' if args.basis == 'axis' else 'pc'}{int(index_of[c])}.png"
        save_grid(out / name, images, rows=args.subjects,
                  title=f"{label} + alpha: moves {names[leader]} ({effects[k][leader]:+.2f} judge prob, "
                        f"-{args.alpha_max:g} to +{args.alpha_max:g} std)",
                  row_labels=[f"test {test.keys[r]}" for r in subject_rows],
                  col_labels=[f"{a:+.2f}" for a in alphas.tolist()], scale=GRID_SCALE)
        # The middle of the sweep is the subject's own reconstruction only when alpha = 0 is sampled; the
        # perturbation numbers compare the two ends with it.
        sweep = images.view(args.subjects, args.num_alphas, *images.shape[1:])
        ends = {end: edit_metrics(to_images(reconstruction), sweep[:, j], p_recon, probs[:, j], exclude=[leader])
                for end, j in (("low", 0), ("high", args.num_alphas - 1))}
        curves.append(probs[:, :, leader].mean(0).tolist())
        curve_alphas.append(t_values.tolist())
        curve_labels.append(f"{label}: {names[leader]}")
        components.append({
            "direction": label, "basis": args.basis, "index": int(index_of[c]), "figure": name,
            "data_std": float(spread[c]), "alphas": alphas.tolist(), "alpha_in_std": t_values.tolist(),
            "score": float(scores[k]), "pixel_change_between_ends": pixel_change[k],
            "moves": [{"attribute": names[a], "judge_prob_change": float(effects[k][a]),
                       "train_correlation": float(corr[a])} for a in top],
            "top_correlated_attributes": [{"attribute": names[a], "train_correlation": float(corr[a])}
                                          for a in torch.argsort(corr.abs(), descending=True)[:3].tolist()],
            "judge_prob_of_leading_attribute_by_alpha": probs[:, :, leader].mean(0).tolist(),
            "ends_vs_reconstruction": ends,
        })
    save_effect_curves(out / "amplify_curves.png", curve_alphas, curves, curve_labels,
                       xlabel="alpha (std of the data along the direction)",
                       ylabel="judge probability (mean over subjects)",
                       title="Feature amplification: the judge's probability of the attribute each direction moves")
    ranking = [{"direction": (f"latent {int(index_of[c])}" if args.basis == "axis" else f"PC {c}"),
                "score": float(scores[k]), "leading_attribute": names[int(leaders[k])],
                "judge_prob_change": float(effects[k][int(leaders[k])])}
               for k, c in sorted(enumerate(candidates), key=lambda kc: -float(scores[kc[0]]))]
    return {"basis": args.basis, "active_directions": active, "alpha_max_std": args.alpha_max,
            "probe_images": len(probe_rows), "subjects": [str(test.keys[r]) for r in subject_rows],
            "components": components, "ranking": ranking[:20]}
