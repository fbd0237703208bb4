"""Identity transfer: morph a subject toward an anchor person (the mean mu over the anchor's images) while keeping
the subject's pose and expression, the coordinates in the within-identity subspace U learnt on train:

    z(t) = mu_s + t (I - U U^T) (m_a - mu_s)

compared with the plain interpolation (1 - t) mu_s + t m_a (README, Editing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from common.plots import save_grid
from edit.common import (GRID_SCALE, EditContext, EditError, EditSettings, blank, choose_rows, grey_change,
                         low_frequency_correlation, parse_ints, principal_axes, psnr, to_images)
from shard_builder.format import UNKNOWN_IDENTITY

ANCHOR_SPLITS = ("test", "train")  # where anchors are looked for, in this order
ANCHOR_COUNT = 3
# The face in an aligned CelebA crop (eyes level at ~0.45 of the height, mouth at ~0.7): an ellipse centred at
# (0.5, 0.55) of the image with half-axes 0.28 of the width and 0.36 of the height. Outside it lie the
# background, the shoulders and most of the hair, which a transfer that keeps the subject's pose and setting
# should leave alone (the hair partly belongs to the identity, so the change outside is an upper bound).
FACE_ELLIPSE = (0.5, 0.55, 0.28, 0.36)


def face_mask(size: int) -> torch.Tensor:
    """[size, size] bool, True inside FACE_ELLIPSE."""
    cx, cy, ax, ay = FACE_ELLIPSE
    centres = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return ((x - cx) / ax).square() + ((y - cy) / ay).square() <= 1


@dataclass
class IdentitySettings(EditSettings):
    anchors: str = field(default="", metadata={"help": "3 identity numbers (default: the 3 with most images)"})
    min_anchor_images: int = 3
    min_identity_images: int = field(default=3, metadata={
        "help": "train identities with this many images teach the within-identity subspace"})
    pose_variance: float = field(default=0.65, metadata={
        "help": "share of the within-identity variance the kept subspace explains"})
    pose_dims: int = field(default=0, metadata={"help": "fix the subspace size instead (0: use --pose-variance)"})
    strengths: str = field(default="0.5,1", metadata={"help": "values of t shown (1: all of the identity part)"})


@dataclass
class Subjects:
    rows: np.ndarray  # test manifest rows
    photos: torch.Tensor  # uint8
    mu: torch.Tensor
    reconstruction_images: torch.Tensor  # dec(mu) as uint8, on the CPU


@dataclass
class AnchorTransfer:
    """One anchor identity, and the subjects' latents moved toward it, decoded."""
    identity: int
    split: str
    rows: np.ndarray  # the anchor's manifest rows in `split`
    photos: torch.Tensor  # uint8
    mean: torch.Tensor  # m_a, the mean mu over the photos
    reconstruction: torch.Tensor  # dec(mu) of the photos, model range
    mean_image: torch.Tensor  # dec(m_a) as uint8
    decoded: dict[str, torch.Tensor]  # per edit (see transfer_latents), model range
    images: dict[str, torch.Tensor]  # the same as uint8, on the CPU


# ----------------------------------------------------------------------------- compute


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
    eigenvalues, vectors = principal_axes(residual, unbiased=False)
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


def choose_subjects(ctx: EditContext, settings: IdentitySettings, anchor_ids: set[int]) -> Subjects:
    test = ctx.split("test")
    eligible = np.flatnonzero(~np.isin(test.identities, list(anchor_ids)))
    rows = choose_rows(eligible, settings.subjects, settings.seed, "test images of identities other than the anchors")
    photos = ctx.images("test", rows)
    mu = ctx.encode_images(photos)
    return Subjects(rows, photos, mu, to_images(ctx.decode_batched(mu)))


def transfer_latents(mu_s: torch.Tensor, m_a: torch.Tensor, projector: torch.Tensor,
                     strengths: list[float]) -> dict[str, torch.Tensor]:
    """The subjects unedited, transferred at each strength, plainly interpolated half way, and the anchor mean."""
    outside = (m_a - mu_s) - (m_a - mu_s) @ projector
    return {"subject_reconstruction": mu_s, **{f"transfer_t{t:g}": mu_s + t * outside for t in strengths},
            "interpolation_t0.5": 0.5 * mu_s + 0.5 * m_a, "anchor_mean": m_a[None].expand_as(mu_s)}


def transfer_to_anchor(ctx: EditContext, anchor: tuple[int, str, np.ndarray], subjects: Subjects,
                       projector: torch.Tensor, strengths: list[float]) -> AnchorTransfer:
    identity, split, rows = anchor
    photos = ctx.images(split, rows)
    mu_anchor = ctx.encode_images(photos)
    m_a = mu_anchor.mean(0)
    decoded = {name: ctx.decode_batched(z) for name, z in transfer_latents(subjects.mu, m_a, projector,
                                                                           strengths).items()}
    return AnchorTransfer(identity, split, rows, photos, m_a, ctx.decode_batched(mu_anchor),
                          to_images(ctx.decode(m_a[None])), decoded, {name: to_images(x) for name, x in decoded.items()})


# ----------------------------------------------------------------------------- measure


def measure_anchor(ctx: EditContext, anchor: AnchorTransfer, subjects: Subjects, basis: torch.Tensor,
                   projector: torch.Tensor) -> dict[str, dict]:
    """Per edit: closeness to the anchor by the judge (features and probabilities, against the anchor's
    reconstructions) and in latent space outside U; pose kept (thumbnail correlation, distance inside U, of the
    re-encoded result); and setting kept: PSNR and mean |change| against the subject's reconstruction outside
    the face ellipse (background, shoulders, hair), beside the change inside it."""
    anchor_features = F.normalize(ctx.judge_features(anchor.reconstruction).mean(0), dim=0)
    face = face_mask(subjects.reconstruction_images.shape[-1])
    anchor_probs = ctx.judge_probs(anchor.reconstruction).mean(0)
    metrics = {}
    for name, decoded in anchor.decoded.items():
        images = anchor.images[name]
        features = F.normalize(ctx.judge_features(decoded), dim=1)
        re_encoded = ctx.encode_images(images)
        off_anchor = re_encoded - anchor.mean
        metrics[name] = {
            "judge_feature_cosine_to_anchor": float((features @ anchor_features).mean()),
            "judge_attribute_distance_to_anchor": float((ctx.judge_probs(decoded) - anchor_probs).abs().mean()),
            "latent_outside_distance_to_anchor": float((off_anchor - off_anchor @ projector).norm(dim=1).mean()),
            "latent_within_distance_to_subject": float(((re_encoded - subjects.mu) @ basis).norm(dim=1).mean()),
            "low_frequency_correlation_to_subject": float(
                low_frequency_correlation(images, subjects.reconstruction_images).mean()),
            "outside_face_psnr_to_subject_db": float(
                psnr(images[:, :, ~face], subjects.reconstruction_images[:, :, ~face]).clamp_max(99).mean()),
            "outside_face_mean_abs_change": float(
                grey_change(images, subjects.reconstruction_images)[:, ~face].mean()),
            "face_mean_abs_change": float(grey_change(images, subjects.reconstruction_images)[:, face].mean()),
        }
    return metrics


# ----------------------------------------------------------------------------- draw


def draw(out: Path, settings: IdentitySettings, report: dict, subjects: Subjects,
         transfers: list[AnchorTransfer]) -> None:
    n, strengths = settings.subjects, report["strengths"]
    overview = [blank(1), subjects.reconstruction_images]
    for anchor, entry in zip(transfers, report["anchors"]):
        anchor_row = torch.cat([anchor.photos.cpu()[:n - 1], anchor.mean_image])
        if len(anchor_row) < n:
            anchor_row = torch.cat([anchor_row[:-1], blank(n - len(anchor_row)), anchor_row[-1:]])
        transferred = [anchor.images[f"transfer_t{t:g}"] for t in strengths]
        grid = torch.cat([anchor_row, subjects.photos.cpu(), subjects.reconstruction_images, *transferred,
                          anchor.images["interpolation_t0.5"]])
        save_grid(out / entry["figure"], grid, rows=3 + len(strengths) + 1,
                  title=f"Identity transfer to identity {anchor.identity} ({len(anchor.rows)} {anchor.split} images; "
                        f"last of row 1: decoded anchor mean)",
                  row_labels=[f"anchor {anchor.identity}", "subject", "reconstruction",
                              *[f"transfer t={t:g}" for t in strengths], "plain interp. 0.5"], scale=GRID_SCALE)
        overview += [anchor.mean_image, transferred[-1]]
    overview_grid = torch.cat([torch.cat([overview[2 * r], overview[2 * r + 1]]) for r in range(len(transfers) + 1)])
    save_grid(out / "identity_overview.png", overview_grid, rows=len(transfers) + 1,
              title=f"Identity transfer (t={strengths[-1]:g}); first column: decoded anchor mean",
              row_labels=["subjects (reconstruction)"] + [f"to anchor {a.identity}" for a in transfers],
              scale=GRID_SCALE)


@torch.no_grad()
def run(ctx: EditContext, settings: IdentitySettings, out: Path, log: Callable[[str], None] = print) -> dict:
    """Learn the within-identity subspace, transfer the subjects to each anchor, measure, draw the grids."""
    strengths = parse_strengths(settings.strengths)
    if (ctx.split("train").identities == UNKNOWN_IDENTITY).any():
        raise EditError(f"identity: {ctx.shards} was built without identity_CelebA.txt, so identities are unknown; "
                        f"put CelebA's identity_CelebA.txt beside the annotation files and rebuild with build-shards")
    basis, subspace = within_identity_basis(ctx.latents("train", log), ctx.split("train").identities,
                                            settings.min_identity_images, settings.pose_variance, settings.pose_dims)
    log(f"within-identity subspace: {subspace['dims']} of {subspace['of']} dims "
        f"({subspace['within_variance_share_kept']:.0%} of the within-identity variance, from "
        f"{subspace['identities_used']} identities)")
    projector = basis @ basis.T
    anchors = find_anchors(ctx, settings.anchors, ANCHOR_COUNT, settings.min_anchor_images)
    subjects = choose_subjects(ctx, settings, {identity for identity, _, _ in anchors})
    transfers = [transfer_to_anchor(ctx, anchor, subjects, projector, strengths) for anchor in anchors]
    report = {"subspace": subspace, "strengths": strengths,
              "subjects": [str(key) for key in ctx.split("test").keys[subjects.rows]],
              "anchors": [{"identity": a.identity, "split": a.split, "images": len(a.rows),
                           "figure": f"identity_anchor{a.identity}.png",
                           "metrics": measure_anchor(ctx, a, subjects, basis, projector)} for a in transfers]}
    draw(out, settings, report, subjects, transfers)
    return report
