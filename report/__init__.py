"""The report of a run: a static page (`index.html`, no server, images beside it) and `report.pdf`, read top down
the way the course grades: sample grids and curves first, then the autoencoder comparison, the design, the test
metrics, the quality targets, a sweep, the edits and the benchmarks.

    from report import ReportInputs, write_report
    written = write_report(Path("runs/demo/report"), ReportInputs(run=Path("runs/demo/vae"), ...))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from report import sections
from report.blocks import Section
from report.page import write_page
from report.pdf import find_browser, renderer_name, write_pdf

__all__ = ["ReportInputs", "Written", "build_sections", "find_browser", "write_page", "write_pdf", "write_report"]


@dataclass
class ReportInputs:
    """Where the stages wrote what the report shows; each optional input adds its section."""
    run: Path
    eval_json: Path | None = None
    bonus_json: Path | None = None
    ae_run: Path | None = None  # with ae_eval_json: the autoencoder-vs-VAE section
    ae_eval_json: Path | None = None
    quality_json: Path | None = None
    sweep_dir: Path | None = None
    edit_dirs: dict[str, Path] = field(default_factory=dict)
    bench_jsons: list[Path] = field(default_factory=list)


@dataclass
class Written:
    page: Path
    pdf: Path | None  # None when not asked for
    pdf_renderer: str | None  # "Chromium" or "matplotlib"


def build_sections(inputs: ReportInputs) -> list[Section]:
    run = Path(inputs.run)
    found = [sections.health_section(run)]
    if inputs.ae_run is not None:
        found.append(sections.comparison_section(run, inputs.eval_json, Path(inputs.ae_run), inputs.ae_eval_json))
    found.append(sections.design_section(run))
    if any(p is not None and Path(p).is_file() for p in (inputs.eval_json, inputs.bonus_json)):
        found.append(sections.metrics_section(inputs.eval_json, inputs.bonus_json))
    quality = sections.read_json(inputs.quality_json)
    if quality:
        found.append(sections.quality_section(quality))
    if inputs.sweep_dir is not None:
        found.append(sections.sweep_section(Path(inputs.sweep_dir)))
    found += [sections.edit_section(name, Path(folder)) for name, folder in inputs.edit_dirs.items()]
    benches = [(Path(p), sections.read_json(p)) for p in inputs.bench_jsons if Path(p).is_file()]
    if benches:
        found.append(sections.bench_section(benches))
    return found


def write_report(out: Path, inputs: ReportInputs, title: str = "CelebA VAE report", subtitle: str = "",
                 pdf: bool = False) -> Written:
    """`out/index.html` and, with `pdf`, `out/report.pdf`: printed by the Chromium found on PATH, else drawn with
    matplotlib; the subtitle says which."""
    found = build_sections(inputs)
    browser = find_browser() if pdf else None
    if pdf:
        subtitle = "; ".join(filter(None, (subtitle, f"report.pdf made by {renderer_name(browser)}")))
    page = write_page(Path(out), title, subtitle, found)
    if not pdf:
        return Written(page, None, None)
    path, renderer = write_pdf(page, found, title, subtitle, browser)
    return Written(page, path, renderer)
