"""The report page and the demo that writes it: every section is there, in a real headless Chromium every image
loads, the PDF is written with or without Chromium, a re-run skips finished steps, and a failing step is named
with the finished ones kept."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import demo
from report import ReportInputs, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]
DEMO_SECTIONS = ("Samples and training curves", "Autoencoder vs VAE", "Design and hyperparameters", "Test metrics",
                 "Quality targets", "Editing: amplify", "Editing: guide", "Editing: identity", "Benchmarks")
DEMO_FLAGS = ["--synthetic-images", "1000", "--epochs", "1", "--classifier-epochs", "1"]


def _browser(page: Path, tmp_path: Path, *extra: str) -> str:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs Debian's chromium where apt can)")
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _body_data(dom: str, name: str) -> int:
    return int(re.search(rf'data-{name}="(-?\d+)"', re.search(r"<body[^>]*>", dom).group(0)).group(1))


def _image_counts(dom: str) -> tuple[int, int]:
    return _body_data(dom, "images"), _body_data(dom, "broken-images")


def _hide_chromium(monkeypatch, tmp_path: Path) -> None:
    """PATH without any browser: the report must draw its PDF itself."""
    empty = tmp_path / "no-browser"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


def _pdf_pages_and_images(pdf: Path) -> tuple[int, int]:
    """Page and image objects of a PDF, read back with pypdf when installed, else counted in its bytes (matplotlib
    writes page and image dictionaries uncompressed)."""
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    try:
        from pypdf import PdfReader
    except ImportError:
        return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data)), len(re.findall(rb"/Subtype\s*/Image", data))
    reader = PdfReader(pdf)
    return len(reader.pages), sum(len(page.images) for page in reader.pages)


def test_report_of_a_bare_run_has_its_sections_and_no_broken_image(tiny_run, tmp_path):
    page = write_report(tmp_path / "report", ReportInputs(run=tiny_run)).page
    text = page.read_text()
    for section in ("Samples and training curves", "Design and hyperparameters", "loss_curves", "reconstructions",
                    "interpolation", "samples", "latent_dim", "valid bits/dim"):
        assert section in text, section
    assert "Test metrics" not in text and "Editing" not in text  # no eval or edits given: no empty sections
    images, broken = _image_counts(_browser(page, tmp_path, "--dump-dom"))
    assert images == 6 and broken == 0


def test_pdf_of_a_page_given_by_a_relative_path(tiny_run, tmp_path, monkeypatch):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    monkeypatch.chdir(tmp_path)
    written = write_report(Path("report"), ReportInputs(run=tiny_run), pdf=True)  # the demo's work folder: runs/demo
    assert written.pdf_renderer == "Chromium" and written.pdf.stat().st_size > 10_000


def test_pdf_without_chromium_is_drawn_with_matplotlib(tiny_run, tmp_path, monkeypatch):
    _hide_chromium(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    written = write_report(Path("report"), ReportInputs(run=tiny_run), pdf=True)
    assert written.pdf_renderer == "matplotlib" and written.pdf == Path("report") / "report.pdf"
    assert "report.pdf made by matplotlib" in written.page.read_text()  # the page says which renderer
    pages, images = _pdf_pages_and_images(written.pdf)
    assert pages >= 3  # a title page, then each of the two sections from a new page
    assert images == 6  # every figure of the page


def test_the_browser_check_does_see_a_broken_image(tiny_run, tmp_path):
    page = write_report(tmp_path / "report", ReportInputs(run=tiny_run)).page
    next((tmp_path / "report" / "img").glob("*reconstructions*")).unlink()
    images, broken = _image_counts(_browser(page, tmp_path, "--dump-dom"))
    assert images == 6 and broken == 1


@pytest.fixture(scope="module")
def demo_work(tmp_path_factory, monkeypatch_module) -> Path:
    """The README's first command (demo.py), sized down: 1,000 synthetic images (5 test identities: the identity
    edit's 3 anchors and subjects from the others), 1 epoch of everything."""
    monkeypatch_module.delenv("CELEBA_ROOT", raising=False)
    work = tmp_path_factory.mktemp("demo") / "work"
    assert demo.main(["--work", str(work), *DEMO_FLAGS]) == 0
    return work


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_demo_report_has_every_section_and_every_image_loads(demo_work, tmp_path):
    page = demo_work / "report" / "index.html"
    text = page.read_text()
    for section in DEMO_SECTIONS:
        assert f">{section}</h2>" in text, section
    for content in ("synthetic CelebA (1,000 images)", "importance-weighted bound (K = 4)", "harmonic metric H",
                    "bonus_1.py", "loss_curves", "reconstructions", "interpolation", "samples", "amplify_z",
                    "guide_add_Eyeglasses", "identity_anchor", "x seeds", "data wait share",
                    "autoencoder: prior samples", "codes vs prior", "model vae → ae"):
        assert content in text, content
    assert text.index("reconstructions") < text.index(">Design and hyperparameters</h2>")  # grids come first
    dom = _browser(page, tmp_path, "--dump-dom", "--window-size=1280,800")
    images, broken = _image_counts(dom)
    assert images == len(list((demo_work / "report" / "img").iterdir())) >= 15 and broken == 0
    assert _body_data(dom, "first-image-top") < 400  # the reconstruction grid is on the first screen
    screenshot = tmp_path / "report.png"
    _browser(page, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,800")
    assert screenshot.stat().st_size > 50_000


def test_demo_report_pdf_has_every_section_on_non_blank_pages(demo_work, tmp_path):
    pdf = demo_work / "report" / "report.pdf"
    if shutil.which("pdftoppm") is None or CHROMIUM is None:
        pytest.skip("needs chromium (writes the PDF) and poppler-utils (reads it)")
    text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout.split())
    for section in DEMO_SECTIONS:
        assert section in text, section
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 3
    for path in pages:
        pixels = np.asarray(Image.open(path).convert("L"))
        assert (pixels < 200).mean() > 0.005, path.name  # text or figures, not an empty page


def test_bonus_1_without_a_checkpoint_finds_the_demo_run(demo_work, tmp_path, monkeypatch, capsys):
    import bonus_1

    split = str(demo_work / "shards" / "test")
    explicit = json.loads((demo_work / "eval" / "bonus_1-test.json").read_text())
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(demo_work)
    # The demo's autoencoder checkpoint made the newest: passed over, it has no KL and so no H.
    for weights in (demo_work / "ae" / "checkpoints").glob("step-*/vae/model.safetensors"):
        os.utime(weights)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bonus_1, "HERE", tmp_path)  # not the repository's own runs/
    assert bonus_1.main(["--shards", split, "--out", str(tmp_path / "found")]) == 0
    assert "no --checkpoint given: using" in capsys.readouterr().out
    found = json.loads((tmp_path / "found" / "bonus_1-test.json").read_text())
    assert found["harmonic"] == explicit["harmonic"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.setattr(bonus_1, "HERE", empty)
    assert bonus_1.main(["--shards", split]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no --checkpoint given and none found" in err and str(empty) in err


def test_hand_in_folder_holds_no_pickle_and_reproduces_h(demo_work, tmp_path):
    from eval.cli import main as eval_main
    from eval.export import main as export_main

    submission = demo_work / "submission"
    files = sorted(p.relative_to(submission).as_posix() for p in submission.rglob("*") if p.is_file())
    assert {"checkpoint/model.safetensors", "checkpoint/model.json", "bonus_1.txt", "bonus_1-test.json",
            "report/index.html"} <= set(files)
    assert not [f for f in files if f.endswith((".pkl", ".bin", ".pt", ".pth"))], files
    assert json.loads((submission / "checkpoint" / "model.json").read_text())["config"]["model"] == "vae"  # not the AE
    exported = json.loads((submission / "bonus_1-test.json").read_text())
    explicit = json.loads((demo_work / "eval" / "bonus_1-test.json").read_text())
    assert exported["harmonic"] == explicit["harmonic"]
    assert f"H = {exported['harmonic']['H']:.6f}" in (submission / "bonus_1.txt").read_text()
    assert eval_main(["--checkpoint", str(submission / "checkpoint"), "--shards", str(demo_work / "shards" / "test"),
                      "-K", "0", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "eval-test.json").read_text())["harmonic"] == exported["harmonic"]
    assert export_main([str(demo_work / "vae"), "--out", str(submission)]) == 1  # never overwrites


def test_demo_rerun_skips_every_finished_step(demo_work, capsys):
    times = json.loads((demo_work / "step_seconds.json").read_text())
    assert demo.main(["--work", str(demo_work), *DEMO_FLAGS]) == 0
    out = capsys.readouterr().out
    for name in times:
        assert f"{name}: complete, skipped" in out, name
    assert json.loads((demo_work / "step_seconds.json").read_text()) == times
    assert (demo_work / "report" / "index.html").is_file()


def test_demo_without_chromium_still_writes_its_pdf(demo_work, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(demo_work, work)
    _hide_chromium(monkeypatch, tmp_path)
    assert demo.main(["--work", str(work), *DEMO_FLAGS]) == 0
    assert "PDF made by matplotlib" in capsys.readouterr().out
    pages, images = _pdf_pages_and_images(work / "report" / "report.pdf")
    assert pages > len(DEMO_SECTIONS) and images == len(list((work / "report" / "img").iterdir()))


def test_demo_names_the_failing_step_and_keeps_finished_work(demo_work, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(demo_work, work)
    shutil.rmtree(work / "eval")
    for weights in (work / "vae" / "checkpoints").glob("*/vae/model.safetensors"):
        weights.write_bytes(b"not safetensors")
    before = {p: p.stat().st_mtime_ns for p in (work / "shards").rglob("*") if p.is_file()}
    assert demo.main(["--work", str(work), *DEMO_FLAGS]) == 1
    captured = capsys.readouterr()
    assert "demo failed at step 'eval'" in captured.out, captured.out
    assert "model.safetensors" in captured.err, captured.err  # the stage's own error names the bad file
    assert {p: p.stat().st_mtime_ns for p in (work / "shards").rglob("*") if p.is_file()} == before
    assert (work / "vae" / "train_summary.json").is_file() and (work / "bench" / "loaders.json").is_file()
