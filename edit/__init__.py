"""Latent face editing (the homework's second task), measured with an independent judge classifier.

    python -m edit.classifier --shards S --out runs/guide --arch cnn --width 32 --seed 0      # the guide
    python -m edit.classifier --shards S --out runs/judge --arch resnet --width 24 --seed 1   # the judge
    python -m edit amplify  --vae RUN --judge runs/judge --shards S --out runs/edits
    python -m edit guide    --vae RUN --guide runs/guide --judge runs/judge --shards S --out runs/edits
    python -m edit identity --vae RUN --judge runs/judge --shards S --out runs/edits

- `edit.classifier`: the 40-attribute classifiers (train, save, load);
- `edit.common`: loading and cross-checking models and shards, latents, subjects, principal axes, measurements;
- `edit.amplify`, `edit.guide`, `edit.identity`: the three edits, each a settings dataclass and
  `run(ctx, settings, out, log) -> report` (compute, measure, draw), callable without the command line;
- `edit.cli`: the command line, its flags generated from those settings.
"""
