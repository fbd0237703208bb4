"""Rate control: the multiplier's dual-ascent arithmetic, and a short run whose KL it holds at the target."""
from __future__ import annotations

import json
import math

import pytest
import torch

from train.rate import LOG_MULTIPLIER_RANGE, RateControl
from train.run import main as train_main


def test_multiplier_moves_by_the_relative_excess_and_stays_in_range():
    rate = RateControl(target=100.0, rate_lr=0.5, beta=2.0, device="cpu")
    assert rate.multiplier.item() == pytest.approx(2.0)
    rate.update(torch.tensor(150.0))  # 50 % over the target: log lambda += 0.5 * 0.5
    assert rate.multiplier.item() == pytest.approx(2.0 * math.exp(0.25))
    rate.update(torch.tensor(100.0))  # on target: no move
    assert rate.multiplier.item() == pytest.approx(2.0 * math.exp(0.25))
    rate.update(torch.tensor(0.0))  # nothing sent: log lambda -= 0.5
    assert rate.multiplier.item() == pytest.approx(2.0 * math.exp(-0.25))
    rate.update(torch.tensor(1e9))
    assert rate.log_multiplier.item() == pytest.approx(LOG_MULTIPLIER_RANGE[1])
    restored = RateControl(target=100.0, rate_lr=0.5, beta=1.0, device="cpu")
    restored.load_state_dict(rate.state_dict())
    assert torch.equal(restored.log_multiplier, rate.log_multiplier)


@pytest.mark.slow
def test_a_short_run_holds_the_kl_at_the_target(synthetic_shards, tmp_path):
    """Left free, this tiny model's KL settles near 230 nats; constrained to 20, the multiplier rises far above 1
    and the batch KL stays at the target."""
    target = 20.0
    out = tmp_path / "run"
    assert train_main(["--shards", str(synthetic_shards), "--out", str(out), "--preset", "tiny", "--batch-size", "16",
                       "--warmup-images", "80", "--log-every", "5", "--kl-anneal-images", "320", "--compile", "off",
                       "--precision", "fp32", "--epochs", "6", "--lr", "2e-3", "--no-figures",
                       "--rate-target", str(target), "--rate-lr", "0.1"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    late = [r for r in steps if r["step"] > 40]  # the warm-up ends at step 20
    assert min(r["kl_weight"] for r in late) > 5.0  # the constraint binds
    mean_kl = sum(r["kl"] for r in late) / len(late)
    assert 0.75 * target < mean_kl < 1.25 * target, [r["kl"] for r in late]
