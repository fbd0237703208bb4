"""The report page and the demo that writes it: every section is there, in a real headless Chromium every image
loads, a re-run skips finished steps, and a failing step is named with the finished ones kept."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import demo
from report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]
DEMO_SECTIONS = ("Data", "Design and hyperparameters", "Test metrics", "Training", "Editing: amplify",
                 "Editing: guide", "Editing: identity", "Benchmarks")
DEMO_FLAGS = ["--synthetic-images", "1000", "--epochs", "1", "--classifier-epochs", "1"]


def _browser(page: Path, tmp_path: Path, *extra: str) -> str:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs Debian's chromium where apt can)")
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _image_counts(dom: str) -> tuple[int, int]:
    body = re.search(r"<body[^>]*>", dom).group(0)
    return int(re.search(r'data-images="(\d+)"', body).group(1)), int(re.search(r'data-broken-images="(\d+)"', body).group(1))


def test_report_of_a_bare_run_has_its_sections_and_no_broken_image(tiny_run, tmp_path):
    page = write_report(tmp_path / "report", tiny_run)
    text = page.read_text()
    for section in ("Data", "Design and hyperparameters", "Training", "loss_curves", "reconstructions",
                    "interpolation", "samples", "latent_dim", "valid bits/dim"):
        assert section in text, section
    assert "Test metrics" not in text and "Editing" not in text  # no eval or edits given: no empty sections
    images, broken = _image_counts(_browser(page, tmp_path, "--dump-dom"))
    assert images == 4 and broken == 0


def test_the_browser_check_does_see_a_broken_image(tiny_run, tmp_path):
    page = write_report(tmp_path / "report", tiny_run)
    next((tmp_path / "report" / "img").glob("*reconstructions*")).unlink()
    images, broken = _image_counts(_browser(page, tmp_path, "--dump-dom"))
    assert images == 4 and broken == 1


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
                    "guide_add_Eyeglasses", "identity_anchor", "x seeds", "data wait share"):
        assert content in text, content
    images, broken = _image_counts(_browser(page, tmp_path, "--dump-dom"))
    assert images == len(list((demo_work / "report" / "img").iterdir())) >= 15 and broken == 0
    screenshot = tmp_path / "report.png"
    _browser(page, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,4000")
    assert screenshot.stat().st_size > 50_000


def test_demo_rerun_skips_every_finished_step(demo_work, capsys):
    times = json.loads((demo_work / "step_seconds.json").read_text())
    assert demo.main(["--work", str(demo_work), *DEMO_FLAGS]) == 0
    out = capsys.readouterr().out
    for name in times:
        assert f"{name}: complete, skipped" in out, name
    assert json.loads((demo_work / "step_seconds.json").read_text()) == times
    assert (demo_work / "report" / "index.html").is_file()


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
