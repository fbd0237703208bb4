"""One global decoder sigma for a fixed-sigma (MSE-trained) model, fitted on the valid split.

An MSE-trained VAE's sigma is a training hyper-parameter (VAEConfig.fixed_logvar), not something it learned, so
its bits/dim at that sigma says more about the hyper-parameter than about the model. To compare it fairly with a
learned-variance model, eval also reports its test bits/dim at the single sigma that minimises the discretized
NLL on the valid split (fitted on valid, applied to test: no peeking at test).

The fit needs the NLL at many sigmas but one pass over valid: a fixed-sigma bin mass depends only on the
mean's distance to the bin (interior levels) or past the open bin's edge (levels 0 and 255), so the pass keeps
histograms of those distances (`model.split_pass.residual_histograms`) and the shared discretized NLL is
evaluated on the histogram bins for each candidate sigma. The test pass then computes the exact NLL at the
fitted sigma.
"""
from __future__ import annotations

import math

import torch

from model import NUM_DIMS, discretized_gaussian_nll_per_pixel
from model.split_pass import RESIDUAL_RANGE

GRID = (-16.0, 2.0, 0.25)  # log-variance scan in model units: sigma from 0.04 to 350 grey levels
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def histogram_nll(histograms: torch.Tensor, logvar: float, span: float = RESIDUAL_RANGE) -> float:
    """Mean discretized NLL per sub-pixel (nats) of the histogrammed residuals at decoder log-variance `logvar`."""
    histograms = histograms.double().cpu()
    bins = histograms.shape[1]
    width = span / bins
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) * width
    total = 0.0
    # Interior: a pixel at level 128 whose mean is `centre` away from its bin centre (0.5/127.5).
    used = histograms[0] > 0
    if used.any():
        mean = (0.5 / 127.5 + centres[used]).float()
        nll = discretized_gaussian_nll_per_pixel(torch.full(mean.shape, 128, dtype=torch.uint8), mean, logvar)
        total += float(histograms[0, used] @ nll.double())
    # Open edge bins: a pixel at level 0 whose mean lies `s` past the bin's upper edge (-127/127.5).
    used = histograms[1] > 0
    if used.any():
        s = -span + 2 * centres[used]
        mean = (-127.0 / 127.5 + s).float()
        nll = discretized_gaussian_nll_per_pixel(torch.zeros(mean.shape, dtype=torch.uint8), mean, logvar)
        total += float(histograms[1, used] @ nll.double())
    return total / float(histograms.sum())


def fit_global_logvar(histograms: torch.Tensor, tolerance: float = 1e-4) -> tuple[float, float]:
    """(log-variance, NLL nats per image) minimising the histogram NLL: a grid scan, then golden-section search
    in the bracket around the best grid point (the NLL is unimodal in log sigma in practice; the scan guards)."""
    low, high, step = GRID
    grid = [low + i * step for i in range(int(round((high - low) / step)) + 1)]
    values = [histogram_nll(histograms, v) for v in grid]
    best = min(range(len(grid)), key=values.__getitem__)
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = histogram_nll(histograms, c), histogram_nll(histograms, d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = histogram_nll(histograms, c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = histogram_nll(histograms, d)
    logvar, nll = (c, fc) if fc <= fd else (d, fd)
    if values[best] < nll:  # only if the scan's point beats the refined one (a non-unimodal corner case)
        logvar, nll = grid[best], values[best]
    return logvar, nll * NUM_DIMS
