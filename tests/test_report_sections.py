"""The report's optional sections: the autoencoder-vs-VAE comparison (given an AE run and its eval) and the
latent size / β sweep (given a sweep folder); each absent when its inputs are not given."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

import demo
from quality import HARMONIC_TARGET
from report import ReportInputs, write_report


def _section(text: str, title: str) -> str:
    """The HTML between the section's heading and the next one, entities unescaped."""
    start = text.index(f">{title}</h2>")
    end = text.find("<h2", start)
    return html.unescape(text[start:end if end >= 0 else None])


@pytest.fixture(scope="module")
def compared(tiny_run, synthetic_shards, tmp_path_factory) -> dict[str, Path]:
    """A 1-epoch tiny autoencoder beside the test run's tiny VAE, both evaluated on the test split with a judge
    (an untrained classifier: the Fréchet distances only need its features)."""
    import torch

    from eval.cli import main as eval_main
    from model.classifier import AttributeClassifier, ClassifierConfig, save_classifier
    from train.run import main as train_main

    work = tmp_path_factory.mktemp("compared")
    names = json.loads((synthetic_shards / "dataset.json").read_text())["attribute_names"]
    torch.manual_seed(0)
    save_classifier(work / "judge", AttributeClassifier(ClassifierConfig(width=8, attribute_names=names)), {})
    assert train_main(["--shards", str(synthetic_shards), "--out", str(work / "ae"), "--model", "ae", "--preset",
                       "tiny", "--epochs", "1", "--batch-size", "16", "--compile", "off", "--precision", "fp32"]) == 0
    for name, run in (("vae", tiny_run), ("ae", work / "ae")):
        assert eval_main(["--checkpoint", str(run), "--shards", str(synthetic_shards / "test"), "-K", "0", "--judge",
                          str(work / "judge"), "--quality-images", "40", "--out", str(work / f"eval-{name}")]) == 0
    return {"run": tiny_run, "eval_json": work / "eval-vae" / "eval-test.json", "ae_run": work / "ae",
            "ae_eval_json": work / "eval-ae" / "eval-test.json"}


def test_comparison_section_shows_both_runs_grids_and_their_numbers(compared, tmp_path):
    page = write_report(tmp_path / "report", ReportInputs(**compared)).page
    text = page.read_text()
    assert text.index(">Samples and training curves</h2>") < text.index(">Autoencoder vs VAE</h2>") \
        < text.index(">Design and hyperparameters</h2>")  # right after the VAE's grids, before the long tables
    section = _section(text, "Autoencoder vs VAE")
    sources = re.findall(r"<img src='img/([^']+)'", section)
    for grid in ("reconstructions", "interpolation", "samples"):
        assert len([s for s in sources if f"{grid}_epoch" in s]) == 2, grid  # the autoencoder's and the VAE's
    assert all((tmp_path / "report" / "img" / s).stat().st_size > 5_000 for s in sources)
    assert "autoencoder: prior samples" in section and "VAE: prior samples" in section
    assert "model vae → ae" in section and "epochs 2 → 1" in section  # the differing settings, from config.json
    for name in ("ae_eval_json", "eval_json"):
        report = json.loads(compared[name].read_text())
        for value in (report["metrics"]["psnr"], report["sample_quality"]["fd_samples_t1"],
                      report["sample_quality"]["fd_real_reference"], report["prior_match"]["cov_distance_to_identity"]):
            assert f"{value:.4f}" in section, value  # the table's cell


def test_report_without_autoencoder_inputs_has_no_comparison_section(tiny_run, tmp_path):
    text = write_report(tmp_path / "report", ReportInputs(run=tiny_run)).page.read_text()
    assert "Autoencoder vs VAE" not in text and "sweep" not in text


def _sweep_result(latent: int, beta: float, bpd: float, harmonic: float, active: int) -> dict:
    """One configuration with the keys `python -m eval.sweep` writes."""
    return {"latent_dim": latent, "beta": beta, "run": f"runs/sweep/latent{latent}-beta{beta:g}", "bpd": bpd,
            "psnr": 21.5, "harmonic": harmonic, "harmonic_n": 5.5, "harmonic_k": harmonic / 2, "active_units": active,
            "kl": 80.0}


def _write_sweep(folder: Path, results: list[dict]) -> Path:
    from common.plots import save_labelled_scatter

    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"minutes": 20.0, "train_flags": ["--preset", "tiny"],
                                                   "results": results}))
    save_labelled_scatter(folder / "sweep.png", [([r["bpd"] for r in results], [r["harmonic"] for r in results],
                                                  "bits/dim", "H")], [str(r["latent_dim"]) for r in results])
    return folder


def test_sweep_section_tables_every_configuration_and_highlights_the_target(tiny_run, tmp_path):
    results = [_sweep_result(128, 1.0, 5.70, 1.35, 128),  # H too high
               _sweep_result(2048, 1.0, 5.75, 0.42, 300),  # meets the target
               _sweep_result(2048, 0.5, 5.95, 0.55, 40)]  # too many bits/dim, too few active components
    sweep = _write_sweep(tmp_path / "sweep", results)
    text = write_report(tmp_path / "report", ReportInputs(run=tiny_run, sweep_dir=sweep)).page.read_text()
    section = _section(text, "Latent size, β and rate sweep")
    assert "20 minutes" in section and "--preset tiny" in section
    rows = re.findall(r"<tr( class='mark')?><td class='num'>([\d,]+)</td><td>([\d.]+)</td>", section)
    assert [(latent, beta, bool(mark)) for mark, latent, beta in rows] == [
        ("128", "1", False), ("2,048", "1", True), ("2,048", "0.5", False)]
    assert "misses: H ≥ 1" in section
    assert f"misses: bits/dim > {HARMONIC_TARGET.bpd:g}, active < {HARMONIC_TARGET.active}" in section
    assert str(HARMONIC_TARGET) in section
    assert "300 / 2048" in section and "0.4200" in section
    image = re.search(r"<img src='img/([^']+sweep\.png)'", section).group(1)
    assert (tmp_path / "report" / "img" / image).stat().st_size > 5_000


def test_sweep_section_marks_nothing_when_no_configuration_meets_the_target(tiny_run, tmp_path):
    sweep = _write_sweep(tmp_path / "sweep", [_sweep_result(16, 1.0, 8.3, 0.17, 13)])
    section = _section(write_report(tmp_path / "report", ReportInputs(run=tiny_run, sweep_dir=sweep)).page.read_text(),
                       "Latent size, β and rate sweep")
    assert "misses: bits/dim > 5.8, active < 64" in section and "class='mark'" not in section


def test_demo_refuses_a_sweep_folder_without_sweep_json_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--work", str(tmp_path / "work"), "--sweep", str(tmp_path)])
    assert exit_info.value.code == 2 and "no sweep.json there" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
