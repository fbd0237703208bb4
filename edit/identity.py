"""Identity transfer: morph a subject toward an anchor person while keeping the subject's pose and expression.

An anchor is the mean mu over several images of one identity (pose, expression and lighting average out).
What varies *within* an identity is learnt from the train split: the residuals mu - mean_identity(mu) of every
identity with at least `--min-identity-images` images, and their principal axes U (the first k, enough for
`--pose-variance` of the within-identity variance, or `--pose-dims`). Pose, expression, lighting and background
live mostly in span(U); identity mostly outside it. The transfer keeps the subject's part inside span(U) and
moves the part outside toward the anchor's:

    z(t) = mu_s + t (I - U U^T) (m_a - mu_s),        t = 1: the outside part is the anchor's

compared with the seed's plain interpolation z = (1 - t) mu_s + t m_a, which also drags pose toward the anchor's
average pose.

Measured, with the judge (not trained with the VAE) and by re-encoding the result:
- closeness to the anchor: cosine similarity of the judge's penultimate features with the anchor's mean
  features (over the anchor's reconstructions), and the mean |delta p| of the 40 judge probabilities to the
  anchor's mean probabilities, before (subject reconstruction) and after;
- pose kept: correlation of 8x8 grey thumbnails with the subject's reconstruction (layout, head position,
  lighting), and the distance inside span(U) of the re-encoded result to the subject.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edit.common import (GRID_SCALE, EditContext, EditError, blank, choose_rows, low_frequency_correlation, parse_ints,
                         to_images)
from shard_builder.format import UNKNOWN_IDENTITY
from train.figures import save_grid

ANCHOR_SPLITS = ("test", "train")  # where anchors are looked for, in this order


def within_identity_basis(mu: torch.Tensor, identities: np.ndarray, min_images: int, variance: float,
                          dims: int) -> tuple[torch.Tensor, dict]:
    """Principal axes [d, k] of mu minus its identity mean, over identities with >= min_images images."""
    ids, inverse, counts = np.unique(identities, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= min_images
    if keep.sum() < 2 * min_images or (counts >= min_images).sum() < 2:
        raise EditError(f"identity: the train split has {(counts >= min_images).sum()} identities with at least "
                        f"{min_images} images; need 2 or more to learn what varies within a person "
                        f"(lower --min-identity-images)")
    groups = torch.as_tensor(inverse[keep], device=mu.device)
    members = mu[torch.as_tensor(np.flatnonzero(keep), device=mu.device)]
    sums = torch.zeros(len(ids), mu.shape[1], device=mu.device).index_add_(0, groups, members)
    residual = members - sums[groups] / torch.as_tensor(counts, device=mu.device, dtype=mu.dtype)[groups, None]
    eigenvalues, vectors = torch.linalg.eigh(residual.T @ residual / len(residual))
    order = torch.argsort(eigenvalues, descending=True)
    eigenvalues, vectors = eigenvalues[order].clamp_min(0), vectors[:, order]
    share = torch.cumsum(eigenvalues, 0) / eigenvalues.sum().clamp_min(1e-12)
    k = dims if dims > 0 else int((share < variance).sum()) + 1
    k = max(1, min(k, mu.shape[1] - 1))
    total = (mu - mu.mean(0)).square().sum(1).mean()
    within = residual.square().sum(1).mean()
    return vectors[:, :k], {"dims": k, "of": mu.shape[1], "within_variance_share_kept": float(share[k - 1]),
                            "identities_used": int((counts >= min_images).sum()), "images_used": int(keep.sum()),
                            "within_identity_share_of_total_variance": float(within / total.clamp_min(1e-12))}


def find_anchors(ctx: EditContext, spec: str, count: int, min_images: int) -> list[tuple[int, str, np.ndarray]]:
    """(identity, split, manifest rows) per anchor: the given identity numbers, or the `count` identities with the
    most images (test split first, then train)."""
    splits = {name: ctx.split(name) for name in ANCHOR_SPLITS}
    if spec:
        anchors = []
        for identity in parse_ints(spec, "--anchors"):
            found = [(name, np.flatnonzero(s.identities == identity)) for name, s in splits.items()]
            found = [(name, rows) for name, rows in found if len(rows)]
            if not found:
                raise EditError(f"--anchors: identity {identity} has no images in the "
                                f"{' or '.join(ANCHOR_SPLITS)} split")
            name, rows = max(found, key=lambda f: len(f[1]))
            if len(rows) < min_images:
                raise EditError(f"--anchors: identity {identity} has only {len(rows)} image(s) in the {name} split; an "
                                f"anchor needs at least {min_images} (--min-anchor-images) to average out pose")
            anchors.append((identity, name, rows))
        return anchors
    anchors = []
    for name, s in splits.items():
        ids, counts = np.unique(s.identities, return_counts=True)
        for i in np.argsort(-counts, kind="stable"):
            if counts[i] >= min_images and len(anchors) < count:
                anchors.append((int(ids[i]), name, np.flatnonzero(s.identities == ids[i])))
    if len(anchors) < count:
        raise EditError(f"only {len(anchors)} identities with at least {min_images} images in the test and train "
                        f"splits; need {count} anchors (lower --min-anchor-images)")
    return anchors


def parse_strengths(spec: str) -> list[float]:
    try:
        strengths = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        strengths = []
    if not strengths or any(not 0 < s <= 1.5 for s in strengths):
        raise EditError(f"--strengths {spec!r}: expected comma-separated values in (0, 1.5]")
    return strengths


def run(ctx: EditContext, args, out, log) -> dict:
    strengths = parse_strengths(args.strengths)
    train = ctx.split("train")
    if (train.identities == UNKNOWN_IDENTITY).any():
        raise EditError(f"identity: {ctx.shards} was built without identity_CelebA.txt, so identities are unknown; "
                        f"put CelebA's identity_CelebA.txt beside the annotation files and rebuild with build-shards")
    mu_train = ctx.latents("train", log)
    basis, basis_info = within_identity_basis(mu_train, train.identities, args.min_identity_images,
                                              args.pose_variance, args.pose_dims)
    log(f"within-identity subspace: {basis_info['dims']} of {basis_info['of']} dims "
        f"({basis_info['within_variance_share_kept']:.0%} of the within-identity variance, from "
        f"{basis_info['identities_used']} identities)")
    projector = basis @ basis.T
    anchors = find_anchors(ctx, args.anchors, 3, args.min_anchor_images)
    test = ctx.split("test")
    anchor_ids = {a[0] for a in anchors}
    eligible = np.flatnonzero(~np.isin(test.identities, list(anchor_ids)))
    subject_rows = choose_rows(eligible, args.subjects, args.seed, "test images of identities other than the anchors")
    subjects = ctx.images("test", subject_rows)
    mu_s = ctx.encode_images(subjects)
    recon = ctx.decode_batched(mu_s)
    recon_images = to_images(recon)

    report_anchors, overview = [], [blank(1), recon_images]
    for identity, split_name, rows in anchors:
        anchor_images = ctx.images(split_name, rows)
        mu_anchor = ctx.encode_images(anchor_images)
        m_a = mu_anchor.mean(0)
        anchor_recon = ctx.decode_batched(mu_anchor)
        anchor_features = F.normalize(ctx.judge_features(anchor_recon).mean(0), dim=0)
        anchor_probs = ctx.judge_probs(anchor_recon).mean(0)
        outside = (m_a - mu_s) - (m_a - mu_s) @ projector

        def measure(z):
            decoded = ctx.decode_batched(z)
            images = to_images(decoded)
            features = F.normalize(ctx.judge_features(decoded), dim=1)
            re_encoded = ctx.encode_images(images)
            off_anchor = re_encoded - m_a
            return images, {
                "judge_feature_cosine_to_anchor": float((features @ anchor_features).mean()),
                "judge_attribute_distance_to_anchor": float((ctx.judge_probs(decoded) - anchor_probs).abs().mean()),
                "latent_outside_distance_to_anchor": float((off_anchor - off_anchor @ projector).norm(dim=1).mean()),
                "latent_within_distance_to_subject": float(((re_encoded - mu_s) @ basis).norm(dim=1).mean()),
                "low_frequency_correlation_to_subject": float(low_frequency_correlation(images, recon_images).mean()),
            }

        _, before = measure(mu_s)
        results = {"subject_reconstruction": before}
        rows_images = []
        for t in strengths:
            images, results[f"transfer_t{t:g}"] = measure(mu_s + t * outside)
            rows_images.append(images)
        naive_images, results["interpolation_t0.5"] = measure(0.5 * mu_s + 0.5 * m_a)
        _, results["anchor_mean"] = measure(m_a[None].expand_as(mu_s))
        anchor_row = torch.cat([anchor_images.cpu()[:args.subjects - 1], to_images(ctx.decode(m_a[None]))])
        if len(anchor_row) < args.subjects:
            anchor_row = torch.cat([anchor_row[:-1], blank(args.subjects - len(anchor_row)), anchor_row[-1:]])
        grid = torch.cat([anchor_row, subjects.cpu(), recon_images, *rows_images, naive_images])
        name = f"identity_anchor{identity}.png"
        save_grid(out / name, grid, rows=3 + len(strengths) + 1,
                  title=f"Identity transfer to identity {identity} ({len(rows)} {split_name} images; last of row 1: "
                        f"decoded anchor mean)",
                  row_labels=[f"anchor {identity}", "subject", "reconstruction",
                              *[f"transfer t={t:g}" for t in strengths], "plain interp. 0.5"], scale=GRID_SCALE)
        overview += [to_images(ctx.decode(m_a[None])), rows_images[-1]]
        report_anchors.append({"identity": identity, "split": split_name, "images": len(rows), "figure": name,
                               "metrics": results})

    overview_grid = torch.cat([torch.cat([overview[2 * r], overview[2 * r + 1]]) for r in range(len(anchors) + 1)])
    save_grid(out / "identity_overview.png", overview_grid, rows=len(anchors) + 1,
              title=f"Identity transfer (t={strengths[-1]:g}); first column: decoded anchor mean",
              row_labels=["subjects (reconstruction)"] + [f"to anchor {a[0]}" for a in anchors], scale=GRID_SCALE)
    return {"subspace": basis_info, "strengths": strengths, "subjects": [str(test.keys[r]) for r in subject_rows],
            "anchors": report_anchors}
