"""The report page: one static `index.html` (no server) gathering a run's design, metrics, curves and grids.

Everything shown is read from files the other stages wrote (the run's config and figures, eval / bonus
JSON, the edit folders, benchmark JSON); images are copied next to the page so the folder can be moved
or zipped as it is.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 0 auto; padding: 1em 1.5em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 14px; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 13px; }
img { max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #eee; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em; }
nav a { margin-right: 1em; }
"""

# Marks on <body> how many images the page has and how many failed to load (a browser test reads them).
IMAGE_CHECK = ("addEventListener('load', () => { const images = [...document.images]; "
               "document.body.dataset.images = images.length; "
               "document.body.dataset.brokenImages = images.filter(i => !i.complete || i.naturalWidth === 0).length; });")


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value):
        return ", ".join(_format(v) for v in value)
    return html.escape(str(value))


def flatten(data: dict, prefix: str = "", skip: tuple[str, ...] = ()) -> list[tuple[str, object]]:
    """Nested dict -> [(dotted key, scalar)], long lists left out (they belong in figures)."""
    rows = []
    for key, value in data.items():
        if key in skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, name + ".", skip)
        elif isinstance(value, list) and (len(value) > 8 or any(isinstance(v, (dict, list)) for v in value)):
            continue
        else:
            rows.append((name, value))
    return rows


def table(rows: list[tuple[str, object]], header: tuple[str, str] = ("", "")) -> str:
    head = f"<tr><th>{header[0]}</th><th>{header[1]}</th></tr>" if any(header) else ""
    body = "".join(f"<tr><td>{html.escape(k)}</td><td class='num'>{_format(v)}</td></tr>" for k, v in rows)
    return f"<table>{head}{body}</table>"


def record_tables(data: dict) -> str:
    """Every list of records in `data` (e.g. a benchmark's rows) as one multi-column table."""
    out = ""
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = [c for c in dict.fromkeys(k for row in value for k in row)
                       if all(not isinstance(row.get(c), (dict, list)) for row in value)]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            body = "".join("<tr>" + "".join(f"<td class='num'>{_format(row.get(c, ''))}</td>" for c in columns) + "</tr>"
                           for row in value)
            out += f"<p>{html.escape(key)}</p><table><tr>{head}</tr>{body}</table>"
    return out


class Page:
    def __init__(self, out: Path, title: str):
        self.out = out
        self.title = title
        self.sections: list[tuple[str, str]] = []
        (out / "img").mkdir(parents=True, exist_ok=True)

    def image(self, source: Path, caption: str) -> str:
        target = self.out / "img" / f"{len(list((self.out / 'img').iterdir())):03d}_{source.name}"
        shutil.copyfile(source, target)
        return (f"<figure><img src='img/{target.name}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def section(self, title: str, body: str) -> None:
        self.sections.append((title, body))

    def write(self) -> Path:
        anchors = [f"s{i}" for i in range(len(self.sections))]
        nav = "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, (t, _) in zip(anchors, self.sections))
        body = "".join(f"<h2 id='{a}'>{html.escape(t)}</h2>{b}" for a, (t, b) in zip(anchors, self.sections))
        page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
                f"content='width=device-width, initial-scale=1'><title>{html.escape(self.title)}</title>"
                f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1><nav>{nav}</nav>{body}"
                f"<script>{IMAGE_CHECK}</script></body></html>")
        path = self.out / "index.html"
        path.write_text(page)
        return path


def _latest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def _read_json(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def write_report(out: Path, run: Path, eval_json: Path | None = None, bonus_json: Path | None = None,
                 edit_dirs: dict[str, Path] | None = None, bench_jsons: list[Path] | None = None,
                 title: str = "CelebA VAE report") -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    page = Page(out, title)
    config = _read_json(run / "config.json") or {}
    summary = _read_json(run / "train_summary.json") or {}
    model_json = _read_json(next(iter(sorted(run.glob("checkpoints/step-*/vae/model.json"))[-1:]), None))
    design = ("<p>Encoder/decoder in the style of the Stable Diffusion autoencoder (GroupNorm + SiLU), ResNeXt "
              "bottlenecks (1×1 reduce, 3×3 grouped, 1×1 expand) with Squeeze-and-Excitation gating and LayerScale, "
              "strided-conv downsampling and bilinear-upsample + conv upsampling with DC-AE non-parametric shortcuts, "
              "<code>Linear(H'·W'·C', 2·latent)</code> into the latent and <code>Linear(latent, H'·W'·C')</code> "
              "out; no global pooling. Trained with AdamW (warm-up + cosine), gradient clipping, EMA weights and "
              "KL annealing.</p>")
    rows = flatten({"model": (model_json or {}).get("config", {}),
                    "training": {k: v for k, v in config.items() if k not in ("resume", "debug_nan_at_step")},
                    "run": {k: v for k, v in summary.items() if k != "last_epoch"}})
    page.section("Design and hyperparameters", design + table(rows, ("setting", "value")))

    evaluation = _read_json(eval_json)
    bonus = _read_json(bonus_json)
    if evaluation or bonus:
        body = ""
        if evaluation:
            body += "<h3>python -m eval (test split)</h3>" + table(flatten(evaluation, skip=("kl_per_component",)),
                                                                   ("metric", "value"))
        if bonus:
            body += "<h3>bonus_1.py</h3>" + table(flatten(bonus), ("metric", "value"))
        body += ("<p class='note'>H goes to 0 as k goes to 0: a collapsed posterior (every latent equal to the prior) "
                 "scores best while reconstructing nothing. Read H with the bits/dim and the number of active latent "
                 "components beside it.</p>")
        for figure in sorted(Path(eval_json).parent.glob("*.png")) if eval_json else []:
            body += page.image(figure, figure.stem.replace("_", " "))
        page.section("Test metrics", body)

    figures = run / "figures"
    body = ""
    for pattern, caption in (("loss_curves.png", "KL and Gaussian NLL, train and valid"),
                             ("reconstructions_epoch*.png", "reconstructions (last epoch)"),
                             ("interpolation_epoch*.png", "interpolation between test images (μ, 10 steps)"),
                             ("samples_epoch*.png", "prior samples at temperatures 0.2, 0.5, 1.0, 1.5")):
        found = _latest(figures, pattern)
        if found is not None:
            body += page.image(found, caption)
    page.section("Training curves and grids", body or "<p>No figures in the run folder.</p>")

    for name, folder in (edit_dirs or {}).items():
        body = ""
        for metrics in sorted(folder.glob("*.json")):
            data = _read_json(metrics)
            body += f"<h3>{html.escape(metrics.stem)}</h3>" + record_tables(data) + table(flatten(data), ("metric", "value"))
        for grid in sorted(folder.glob("*.png")):
            body += page.image(grid, grid.stem.replace("_", " "))
        page.section(f"Editing: {name}", body or "<p>No outputs.</p>")

    benches = [(path, _read_json(path)) for path in bench_jsons or [] if path.is_file()]
    if benches:
        body = "".join(f"<h3>{html.escape(path.stem)}</h3>" + record_tables(data) + table(flatten(data), ("measure", "value"))
                       for path, data in benches)
        page.section("Benchmarks", body)
    return page.write()
