"""Evaluation: honest likelihoods of a checkpoint on a split (`python -m eval`, shared with `bonus_1.py`).

- `eval.core.evaluate`: the passes over the split (through `model.split_pass.split_sums`, the trainer's own) and
  the JSON-ready report;
- `eval.sigma_fit`: one global decoder sigma for fixed-sigma models, fitted on the valid split;
- `eval.cli`: the command line, the rich table, the KL-per-component figure, clear errors.
"""
