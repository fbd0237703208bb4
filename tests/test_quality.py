"""quality.py: each stated target against values on either side of it, and a missing input named in one line."""
from __future__ import annotations

import json

import quality


def _change(name: str, guided: int, baseline: int) -> dict:
    return {"change": name, "subjects": list(range(8)), "guided": {"judge_success": guided},
            "mean_difference_matched": {"judge_success": baseline}}


def test_synthetic_targets_compare_against_their_thresholds():
    report = {"metrics": {"psnr": 27.0}, "sample_quality": {"mean_face_psnr_t0.2": 23.99}}
    summary = {"guided": {"other_attributes_mean_abs_change": 0.11, "outside_region_mean_abs_change": 9.0},
               "mean_difference_matched": {"other_attributes_mean_abs_change": 0.1,
                                           "outside_region_mean_abs_change": 9.0}}
    guide = {"changes": [_change("add Eyeglasses", 5, 6), _change("add Bangs", 3, 3)], "summary": summary}
    rows = {row["measure"]: row["met"] for row in quality.checks(report, guide, "synthetic")}
    assert rows == {"reconstruction PSNR, dB": True,  # equal to the target meets it
                    "mean-face PSNR of temperature-0.2 samples, dB": False,
                    "guided 'add Eyeglasses': judge successes": False,
                    "guided 'add Bangs': judge successes": True,
                    "guided edits: the judge's other attributes, mean |Δp|": False,
                    "guided edits: grey levels changed outside the attribute's region": True}


def test_celeba_targets_and_missing_sample_quality():
    report = {"metrics": {"psnr": 22.9, "bpd": 5.6}, "sample_quality": {}}
    rows = {row["measure"]: (row["met"], row["target"]) for row in quality.checks(report, None, "celeba")}
    assert rows == {"test bits/dim (negative ELBO)": (True, "≤ 5.6"), "reconstruction PSNR, dB": (False, "≥ 23"),
                    "mean-face PSNR of temperature-0.2 samples, dB": (None, "≥ 24")}


def test_harmonic_target_names_each_miss():
    target = quality.HarmonicTarget(harmonic=1.0, bpd=5.8, active=64)
    assert target.misses({"harmonic": 0.99, "bpd": 5.8, "active_units": 64}) == []
    assert target.misses({"harmonic": 1.0, "bpd": 5.81, "active_units": 63}) == ["H ≥ 1", "bits/dim > 5.8",
                                                                                  "active < 64"]


def test_cli_writes_json_and_names_a_missing_file(tmp_path, capsys):
    assert quality.main(["--work", str(tmp_path)]) == 1
    assert str(tmp_path / "eval" / "eval-test.json") in capsys.readouterr().err
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval-test.json").write_text(json.dumps({"metrics": {"psnr": 30.0}}))
    assert quality.main(["--work", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "quality.json").read_text())
    assert written["data"] == "synthetic" and written["checks"][0]["met"] is True
    assert written["checks"][1]["met"] is None  # no judge, no mean-face PSNR
