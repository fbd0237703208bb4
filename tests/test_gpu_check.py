"""scripts/gpu_check.sh end to end, shrunk to the CPU, as on the bare GPU machine it is made for: webdataset and
DALI cannot be imported there, so their loaders must be skipped (and named), not break the check."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A python (`-c CODE` or a script) with a finder in front of every other refusing webdataset and nvidia.* (DALI).
WITHOUT_WDS_AND_DALI = """
import runpy, sys
from importlib.abc import MetaPathFinder

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("webdataset", "nvidia"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Refuse())
if sys.argv[1] == "-c":  # python -c CODE
    exec(sys.argv[2])
else:  # python SCRIPT ARGS...
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_check_shrunk_to_the_cpu(tmp_path):
    out = tmp_path / "out"
    wrapper = tmp_path / "python"  # what gpu_check.sh calls as $PYTHON
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{WITHOUT_WDS_AND_DALI}' \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**os.environ, "PYTHON": str(wrapper), "OUT": str(out), "PYTHONPATH": ""}
    shrunk = ["--cpu", "--images", "400", "--synthetic-images", "300", "--preset", "tiny", "--batch-size", "4"]
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), *shrunk], env=env, capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["train_images"] >= 400 and report["steps"] == report["train_images"] // report["batch_size"]
    skipped = {(row["loader"], row["shards"]): row.get("skipped", "") for row in report["loaders"]}
    assert skipped[("resident", "raw")] == "" and report["loaders"][0]["img_per_s"] > 0
    assert all("webdataset is not installed" in skipped[("webdataset", e)] for e in ("raw", "jpg"))
    assert all("nvidia.dali is not installed" in skipped[("dali", e)] for e in ("raw", "jpg"))
    assert report["log_windows"] >= 2 and report["compile_s_estimate"] is not None  # >= 100 steps, a window per 50
    for key in ("img_per_s", "epoch_s", "data_wait_share", "test_bpd", "test_psnr", "mean_face_psnr_t0.2"):
        assert report[key] == report[key] and report[key] is not None, key  # present and not NaN
    files = sorted(path.name for path in out.iterdir())
    assert len(files) <= 8 and "gpu_check.json" in files and any(f.startswith("samples_epoch") for f in files)
