"""The report page: every section is there and, in a real headless Chromium, every image loads."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from eval.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]


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


def test_report_has_every_section_and_no_broken_image(tiny_run, tmp_path):
    page = write_report(tmp_path / "report", tiny_run)
    text = page.read_text()
    for section in ("Design and hyperparameters", "Training curves and grids", "loss_curves", "reconstructions",
                    "interpolation", "samples", "latent_dim"):
        assert section in text, section
    images, broken = _image_counts(_browser(page, tmp_path, "--dump-dom"))
    assert images == 4 and broken == 0
    screenshot = tmp_path / "report.png"
    _browser(page, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,1600")
    assert screenshot.stat().st_size > 10_000


def test_the_browser_check_does_see_a_broken_image(tiny_run, tmp_path):
    page = write_report(tmp_path / "report", tiny_run)
    next((tmp_path / "report" / "img").glob("*reconstructions*")).unlink()
    images, broken = _image_counts(_browser(page, tmp_path, "--dump-dom"))
    assert images == 4 and broken == 1
