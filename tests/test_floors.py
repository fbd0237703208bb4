"""floors.py: each floor of issue #13 against values on either side of it, and a missing input named in one line."""
from __future__ import annotations

import json

import floors


def _change(name: str, guided: int, baseline: int) -> dict:
    return {"change": name, "subjects": list(range(8)), "guided": {"judge_success": guided},
            "mean_difference_matched": {"judge_success": baseline}}


def test_synthetic_floors_compare_against_their_thresholds():
    report = {"metrics": {"psnr": 27.5}, "sample_quality": {"mean_face_psnr_t0.2": floors.BEFORE_MEAN_FACE_PSNR_T02}}
    guide = {"changes": [_change("add Eyeglasses", 5, 6), _change("add Bangs", 3, 3)]}
    rows = {row["name"]: row["passed"] for row in floors.checks(report, guide, "synthetic")}
    assert rows == {"reconstruction PSNR, dB": True,
                    "mean-face PSNR at T = 0.2, dB": False,  # equal to before is not measurably closer
                    "guided 'add Eyeglasses': judge successes": False,
                    "guided 'add Bangs': judge successes": True}


def test_celeba_floors_and_missing_sample_quality():
    report = {"metrics": {"psnr": 22.9, "bpd": 5.6}, "sample_quality": {}}
    rows = {row["name"]: row["passed"] for row in floors.checks(report, None, "celeba")}
    assert rows == {"bits/dim (test)": True, "reconstruction PSNR, dB": False, "mean-face PSNR at T = 0.2, dB": None}


def test_cli_writes_json_and_names_a_missing_file(tmp_path, capsys):
    assert floors.main(["--work", str(tmp_path)]) == 1
    assert str(tmp_path / "eval" / "eval-test.json") in capsys.readouterr().err
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval-test.json").write_text(json.dumps({"metrics": {"psnr": 30.0}}))
    assert floors.main(["--work", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "floors.json").read_text())
    assert written["data"] == "synthetic" and written["checks"][0]["passed"] is True
