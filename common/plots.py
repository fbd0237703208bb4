"""Every PNG the project draws (matplotlib): image grids, loss curves, the KL per component, effect curves, bars."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _save(fig, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def tile(images: torch.Tensor | np.ndarray, rows: int, pad: int = 2) -> np.ndarray:
    """uint8 [N,3,H,W] (N = rows*cols, row-major) -> one HWC uint8 mosaic with white gutters."""
    array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    count, _, height, width = array.shape
    cols = -(-count // rows)
    mosaic = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(array):
        r, c = divmod(i, cols)
        y, x = pad + r * (height + pad), pad + c * (width + pad)
        mosaic[y:y + height, x:x + width] = image.transpose(1, 2, 0)
    return mosaic


def save_grid(path: Path, images: torch.Tensor | np.ndarray, rows: int, title: str = "",
              row_labels: Sequence[str] = (), col_labels: Sequence[str] = (), scale: float = 1.0) -> Path:
    """Save a labelled image grid as PNG (images uint8 [rows*cols, 3, H, W], row-major)."""
    mosaic = tile(images, rows)
    height, width = mosaic.shape[:2]
    dpi = 100
    margin_left = 1.6 if row_labels else 0.1
    margin_top = (0.5 if title else 0.1) + (0.35 if col_labels else 0)
    fig = plt.figure(figsize=(width * scale / dpi + margin_left, height * scale / dpi + margin_top), dpi=dpi)
    ax = fig.add_axes((margin_left / fig.get_figwidth(), 0, 1 - margin_left / fig.get_figwidth(),
                       1 - margin_top / fig.get_figheight()))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    cols = -(-len(images) // rows)
    cell_h, cell_w = (height - 2) / rows, (width - 2) / cols
    for r, label in enumerate(row_labels):
        ax.text(-4, 2 + (r + 0.5) * cell_h, label, ha="right", va="center", fontsize=8)
    for c, label in enumerate(col_labels):
        ax.text(2 + (c + 0.5) * cell_w, -4, label, ha="center", va="bottom", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / fig.get_figheight())
    return _save(fig, path, dpi)


def save_loss_curves(path: Path, steps: Sequence[dict], epochs: Sequence[dict]) -> Path:
    """KL and Gaussian NLL (nats per image) for train (per logged step and per epoch) and valid (per epoch)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, name in ((axes[0], "gaussian_nll", "Gaussian NLL"), (axes[1], "kl", "KL divergence")):
        if steps:
            ax.plot([s["step"] for s in steps], [s[key] for s in steps], color="tab:blue", alpha=0.35,
                    label="train (logged steps)")
        if epochs:
            x = [e["step"] for e in epochs]
            ax.plot(x, [e["train"][key] for e in epochs], "o-", color="tab:blue", label="train (epoch mean)")
            ax.plot(x, [e["valid"][key] for e in epochs], "s-", color="tab:orange", label="valid (EMA weights)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{name} (nats / image)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def save_diagnostics(path: Path, steps: Sequence[dict], epochs: Sequence[dict], point_latent: bool = False) -> Path:
    """Bits/dim (negative ELBO; train per logged step, valid per epoch), the decoder's sigma and the posterior's
    sigma over training; for an adversarial autoencoder also its discriminator's and generator's losses. A point
    latent (the autoencoders) has no KL and no posterior sigma: its bits/dim are the NLL's at z = mu."""
    panels = [("bpd", "bits / dim (NLL at z = mu)" if point_latent else "bits / dim (negative ELBO)",
               "bits per sub-pixel"), ("decoder_std", "decoder sigma", "grey levels (0..255)")]
    if not point_latent:
        panels.append(("posterior_std", "posterior sigma, mean over components", "latent units (prior: 1)"))
    if any(s.get("discriminator_loss") for s in steps):
        panels += [("discriminator_loss", "discriminator loss (BCE, real + fake)", "nats"),
                   ("generator_loss", "generator loss (BCE, codes taken for real)", "nats"),
                   ("discriminator_accuracy", "discriminator accuracy", "share correct (0.5: fooled)")]
    rows = -(-len(panels) // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 4 * rows), squeeze=False)
    for ax, (key, name, unit) in zip(axes.flat, panels):
        logged = [s for s in steps if key in s]
        if logged:
            ax.plot([s["step"] for s in logged], [s[key] for s in logged], color="tab:blue", alpha=0.6,
                    label="train (logged steps)")
        valid = [e for e in epochs if key in e["valid"]]
        if valid:
            ax.plot([e["step"] for e in valid], [e["valid"][key] for e in valid], "s-", color="tab:orange",
                    label="valid (EMA weights)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(unit)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if logged or valid:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def save_kl_per_component(path: Path, kl_per_component: Sequence[float], mu_variance: Sequence[float],
                          threshold: float = 0.01, title: str = "") -> Path:
    """Per-component KL (nats / image), sorted descending, bars coloured by activity (Var_x[mu_j] > threshold),
    and below it Var_x[mu_j] in the same order with the active threshold drawn as a line."""
    kl = np.asarray(kl_per_component, dtype=np.float64)
    variance = np.asarray(mu_variance, dtype=np.float64)
    order = np.argsort(-kl, kind="stable")
    active = variance[order] > threshold
    ranks = np.arange(len(kl))
    colors = np.where(active, "tab:blue", "tab:gray")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, gridspec_kw={"height_ratios": (2, 1)})
    top.bar(ranks, kl[order], width=1.0, color=colors, linewidth=0)
    top.set_ylabel("KL (nats / image)")
    top.set_title(title or f"KL per latent component, sorted: {int(active.sum())} of {len(kl)} active "
                           f"(Var[mu] > {threshold:g}, blue)")
    top.grid(alpha=0.3, axis="y")
    bottom.bar(ranks, np.maximum(variance[order], 1e-12), width=1.0, color=colors, linewidth=0)
    bottom.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"active threshold {threshold:g}")
    bottom.set_yscale("log")
    bottom.set_ylabel("Var over data of mu_j")
    bottom.set_xlabel("latent component (sorted by KL)")
    bottom.legend(fontsize=8, loc="upper right")
    bottom.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def save_effect_curves(path: Path, xs: Sequence[Sequence[float]], ys: Sequence[Sequence[float]],
                       labels: Sequence[str], xlabel: str | Sequence[str] = "", ylabel: str = "",
                       title: str = "") -> Path:
    """Several measured curves on one axis (e.g. a judge's attribute probability against an edit's strength), y in
    [0, 1]. With a list of x labels, one panel per label, sharing y: xs[p][k] is curve k's x in panel p."""
    panels = [(xlabel, xs)] if isinstance(xlabel, str) else list(zip(xlabel, xs))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 if len(panels) == 1 else 5.2 * len(panels), 4.2),
                             sharey=True, squeeze=False)
    for ax, (panel_xlabel, panel_xs) in zip(axes[0], panels):
        for x, y, label in zip(panel_xs, ys, labels):
            ax.plot(x, y, "o-", label=label)
        ax.set_xlabel(panel_xlabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_metric_bars(path: Path, groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str = "",
                     title: str = "") -> Path:
    """Grouped bars: one group per x label, one bar per series (e.g. guided edit vs baseline per label change)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups)), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def save_labelled_scatter(path: Path, panels: Sequence[tuple[Sequence[float], Sequence[float], str, str]],
                          labels: Sequence[str], title: str = "") -> Path:
    """Side-by-side scatter panels of the same labelled points: each panel is (xs, ys, xlabel, ylabel)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (xs, ys, xlabel, ylabel) in zip(axes[0], panels):
        ax.scatter(xs, ys, color="tab:blue")
        for x, y, label in zip(xs, ys, labels):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_scatter_by_label(path: Path, points: np.ndarray, labels: np.ndarray, axes: tuple[str, str],
                          names: tuple[str, str], title: str = "") -> Path:
    """2-D points coloured by a boolean label (False: names[0], True: names[1])."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for value, name, color in ((False, names[0], "tab:gray"), (True, names[1], "tab:orange")):
        chosen = points[labels == value]
        ax.scatter(chosen[:, 0], chosen[:, 1], s=8, alpha=0.6, color=color, label=f"{name} ({len(chosen)})")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
