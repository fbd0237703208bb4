"""scripts/benchmarks_tables.py: BENCHMARKS.md's tables rebuilt from small benchmark JSON files, only between
their markers, and a missing marker named."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmarks_tables.py"
spec = importlib.util.spec_from_file_location("benchmarks_tables", SCRIPT)
tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tables)

PAGE = """# Benchmarks

## Loaders
text before
<!-- table:loaders -->
| old |
<!-- end:loaders -->
text after

## Sweep
<!-- table:sweep -->
<!-- end:sweep -->
"""


def _loaders_run(baseline: float, dali: float) -> dict:
    return {"rows": [{"loader": "seeds", "shards": "jpeg", "img_per_s": baseline, "x_seeds": 1.0, "note": ""},
                     {"loader": "dali", "shards": "raw", "img_per_s": dali, "x_seeds": dali / baseline,
                      "note": "CPU-only pipeline"}]}


def test_tables_replace_only_their_blocks(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(PAGE)
    runs = []
    for i, (baseline, dali) in enumerate(((3000.0, 78000.0), (4000.0, 96000.0))):
        runs.append(tmp_path / f"loaders{i}.json")
        runs[-1].write_text(json.dumps(_loaders_run(baseline, dali)))
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"minutes": 6, "results": [
        {"latent_dim": 2048, "beta": 2.0, "harmonic": 0.7149, "harmonic_n": 5.38, "harmonic_k": 0.38, "bpd": 5.444,
         "psnr": 18.95, "active_units": 2048, "kl": 540.0}]}))
    assert tables.main(["--file", str(page), "--loaders", *map(str, runs), "--sweep", str(sweep)]) == 0
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\n## Loaders\ntext before\n<!-- table:loaders -->\n| loader |")
    assert "| old |" not in text and "text after" in text
    assert "| dali (CPU-only pipeline) | raw | 78,000 / 96,000 | 26.0 / 24.0 |" in text
    assert "| seeds | jpeg | 3,000 / 4,000 | 1.0 / 1.0 |" in text
    assert "| 2,048 | 2 | 0.715 | 5.38 | 0.38 | 5.444 | 18.95 | 2048/2048 |" in text
    tables.main(["--file", str(page), "--sweep", str(sweep)])
    assert page.read_text() == text  # the same JSON gives the same page


def test_a_missing_block_is_named(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(PAGE)
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"rows": [{"feed": "on-device batch", "variant": "eager-fp32", "images_per_s": 58.0,
                                           "data_wait_share": 0.0, "peak_gib": None}]}))
    with pytest.raises(SystemExit, match="table:train"):
        tables.main(["--file", str(page), "--train", str(train)])
    assert page.read_text() == PAGE
    assert "| on-device batch | eager-fp32 | 58 | 0.0 % |  |  |" in tables.train_table(json.loads(train.read_text()))
