"""The whole chain in one command, ending in a report page and its PDF:

    data -> build-shards (+ verify) -> loader and trainer benchmarks -> an autoencoder of the same network ->
         the VAE -> guide and judge classifiers -> eval (with the judge) -> bonus_1.py -> the autoencoder's eval
         -> 3 edits -> quality targets -> report (index.html, report.pdf) -> hand-in folder

Uses the dataset at $CELEBA_ROOT when set, else makes the embedded synthetic CelebA. Training takes the
trainer's defaults for the device (train/run.py's recipe) with the demo's budget: on CPU cores 3.5 minutes for
the synthetic faces and the CPU recipe's 20 for real ones, epochs on a GPU. Every step writes into `--work` and is
skipped on a re-run when its output is complete; a failing step is named and the finished ones are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from common.device import default_device, require_usable_gpu
from common.errors import UserError, report_user_error
from report import ReportInputs, write_report

console = Console()
SYNTHETIC_MINUTES = 3.5  # the VAE's CPU budget on the synthetic faces: simpler than CelebA's, learnt sooner


@dataclass
class Step:
    name: str
    done: Callable[[], bool]  # True when the step's output is complete: the step is skipped
    run: Callable[[], None]


def call(main: Callable[[list[str]], int], argv: list[str]) -> None:
    """Run a stage's `main(argv)` in this process; a non-zero exit code fails the step."""
    code = main([str(a) for a in argv])
    if code:
        raise RuntimeError(f"exited with code {code}")


def resume_flags(run: Path) -> list[str]:
    """An interrupted training step continues from its last checkpoint."""
    return ["--resume", "latest"] if (run / "checkpoints").is_dir() else []


@dataclass
class Plan:
    steps: list[Step]
    report: ReportInputs  # what the steps write, for the report page
    shards: Path
    subtitle: str  # the data and the machine


def plan(work: Path, root: Path | None, args: argparse.Namespace) -> Plan:
    from bonus_1 import main as bonus_main
    from edit.classifier import main as classifier_main
    from edit.cli import main as edit_main
    from eval.cli import main as eval_main
    from loaders.bench import main as loaders_bench_main
    from quality import main as quality_main
    from shard_builder.build import BuildOptions, build
    from shard_builder.read import DATASET_JSON
    from shard_builder.synthetic import generate
    from shard_builder.verify import verify
    from train.bench import main as train_bench_main
    from train.recipes import CPU, GPU
    from train.run import main as train_main

    gpu = default_device(args.cpu).type == "cuda"
    synthetic = root is None
    root = root or work / "synthetic" / "celeba"
    shards, run, ae_run, edits = work / "shards", work / "vae", work / "ae", work / "edits"
    guide, judge = work / "classifiers" / "guide", work / "classifiers" / "judge"
    classifier_epochs = args.classifier_epochs or (10 if gpu else 4)
    bench = work / "bench"

    def make_data() -> None:
        if root.exists():  # an interrupted generation: its partial output is not worth keeping
            raise RuntimeError(f"{root} exists but is incomplete; remove it and re-run")
        console.print(f"making {args.synthetic_images:,} synthetic CelebA images in {root}")
        generate(root, num_images=args.synthetic_images, seed=0)

    def make_shards() -> None:
        summary = build(root, shards, BuildOptions())
        console.print(f"built {sum(summary.dataset['counts'].values()):,} images into {shards} in {summary.seconds:.1f} s")
        counts = verify(shards, root, workers=os.cpu_count() or 1)
        console.print("verified byte for byte against the source: " + ", ".join(f"{s} {n:,}" for s, n in counts.items()))

    # The trainer's defaults are the recipe for the device; the demo sets only the budget. --epochs replaces the
    # CPU budget (the tests' short runs). The autoencoder only has to show its reconstructions, interpolations and
    # meaningless prior samples beside the VAE's, so it gets a quarter of the budget.
    if args.epochs:
        budget, ae_budget = ["--epochs", args.epochs], ["--epochs", max(1, args.epochs // 4)]
    elif gpu:  # the GPU recipe's own budget (train/recipes.py); the autoencoder a quarter of it
        budget, ae_budget = [], ["--epochs", max(1, GPU.budget["epochs"] // 4)]
    else:
        minutes = args.minutes or (SYNTHETIC_MINUTES if synthetic else CPU.budget["minutes"])
        budget, ae_budget = ["--minutes", minutes], ["--minutes", minutes / 4]
    cpu_flag = ["--cpu"] if args.cpu else []
    logging = ["--log-every", 25, "--checkpoint-every", 1000, *cpu_flag]
    train_flags = ["--shards", shards, "--out", run, *budget, *logging]
    ae_flags = ["--shards", shards, "--out", ae_run, "--model", "ae", *ae_budget, *logging]
    eval_json, bonus_json = work / "eval" / "eval-test.json", work / "eval" / "bonus_1-test.json"
    ae_eval_json = work / "eval" / "ae" / "eval-test.json"
    quality_json = work / "quality.json"
    edit_common = ["--vae", run, "--judge", judge, "--shards", shards, *cpu_flag]
    steps = [
        Step("data", lambda: (root / "list_eval_partition.txt").is_file() or not synthetic, make_data),
        Step("shards", lambda: (shards / DATASET_JSON).is_file(), make_shards),
        # Short runs (best of 1 on CPU): the report's throughput tables for this machine and this data.
        Step("loader benchmark", (bench / "loaders.json").is_file,
             lambda: call(loaders_bench_main, ["--root", root, "--shards", shards, "--json", bench / "loaders.json",
                                               "--repeats", 3 if gpu else 1, "--seeds-images", 8192])),
        Step("trainer benchmark", (bench / "train.json").is_file,
             lambda: call(train_bench_main, ["--shards", shards, "--json", bench / "train.json",
                                             *(["--preset", "gpu", "--steps", 30] if gpu else
                                               ["--preset", "cpu", "--steps", 8, "--warmup", 2,
                                                "--variants", "eager-fp32,eager-bf16"])])),
        Step("train autoencoder", lambda: (ae_run / "train_summary.json").is_file(),
             lambda: call(train_main, ae_flags + resume_flags(ae_run))),
        Step("train", lambda: (run / "train_summary.json").is_file(),
             lambda: call(train_main, train_flags + resume_flags(run))),
        Step("guide classifier", lambda: (guide / "test_accuracy.json").is_file(),
             lambda: call(classifier_main, ["--shards", shards, "--out", guide, "--arch", "cnn", "--seed", 0,
                                            "--epochs", classifier_epochs, *cpu_flag])),
        Step("judge classifier", lambda: (judge / "test_accuracy.json").is_file(),
             lambda: call(classifier_main, ["--shards", shards, "--out", judge, "--arch", "resnet", "--width", 24,
                                            "--seed", 1, "--epochs", classifier_epochs, *cpu_flag])),
        Step("eval", eval_json.is_file,
             lambda: call(eval_main, ["--checkpoint", run, "--shards", shards / "test", "--out", eval_json.parent,
                                      "--iw-samples", 16 if gpu else 4, "--judge", judge, *cpu_flag])),
        Step("bonus_1", bonus_json.is_file,
             lambda: call(bonus_main, ["--checkpoint", run, "--shards", shards / "test", "--out", bonus_json.parent,
                                       *cpu_flag])),
        Step("eval autoencoder", ae_eval_json.is_file,
             lambda: call(eval_main, ["--checkpoint", ae_run, "--shards", shards / "test", "--out", ae_eval_json.parent,
                                      "--judge", judge, *cpu_flag])),
        Step("edit amplify", (edits / "amplify" / "amplify.json").is_file,
             lambda: call(edit_main, ["amplify", *edit_common, "--out", edits / "amplify"])),
        Step("edit guide", (edits / "guide" / "guide.json").is_file,
             lambda: call(edit_main, ["guide", *edit_common, "--guide", guide, "--out", edits / "guide"])),
        Step("edit identity", (edits / "identity" / "identity.json").is_file,
             lambda: call(edit_main, ["identity", *edit_common, "--out", edits / "identity"])),
        Step("quality targets", quality_json.is_file,
             lambda: call(quality_main, ["--work", work, "--data", "synthetic" if synthetic else "celeba"])),
    ]
    source = f"CelebA at {root}" if not synthetic else f"synthetic CelebA ({args.synthetic_images:,} images)"
    device = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    report = ReportInputs(run=run, eval_json=eval_json, bonus_json=bonus_json, ae_run=ae_run,
                          ae_eval_json=ae_eval_json, quality_json=quality_json, sweep_dir=args.sweep,
                          edit_dirs={name: edits / name for name in ("amplify", "guide", "identity")},
                          bench_jsons=[bench / "loaders.json", bench / "train.json"])
    return Plan(steps, report, shards, f"{source}; {device}, torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/demo"))
    parser.add_argument("--synthetic-images", type=int, default=6000)
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="the VAE's training budget on CPU cores (0: 3.5 on the synthetic data, the CPU recipe's "
                             "20 on $CELEBA_ROOT, the budget its quality targets are stated for)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="train for epochs instead of the budget (0: --minutes on CPU, the GPU recipe's epochs on "
                             "a GPU)")
    parser.add_argument("--classifier-epochs", type=int, default=0,
                        help="guide/judge classifier epochs (0: 4 on CPU, 10 on a GPU)")
    parser.add_argument("--sweep", type=Path, help="an existing `python -m eval.sweep` output folder to include in "
                                                   "the report (the demo does not run a sweep)")
    parser.add_argument("--cpu", action="store_true", help="train, evaluate and edit on the CPU, also where nvidia-smi "
                                                           "lists a GPU")
    args = parser.parse_args(argv)
    try:
        require_usable_gpu(allow_cpu=args.cpu)
    except UserError as err:
        return report_user_error(err)
    if args.sweep and not (args.sweep / "sweep.json").is_file():  # say so now, not after the whole chain
        parser.error(f"--sweep {args.sweep}: no sweep.json there (python -m eval.sweep --out DIR writes it)")
    root = Path(os.environ["CELEBA_ROOT"]) if os.environ.get("CELEBA_ROOT") else None
    console.rule(f"demo on {'CelebA at ' + str(root) if root else 'synthetic CelebA'} -> {args.work}")
    chain = plan(args.work, root, args)
    timings_file = args.work / "step_seconds.json"  # kept across re-runs: the report shows every step's time
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    for step in chain.steps:
        if step.done():
            console.print(f"[dim]{step.name}: complete, skipped[/dim]")
            continue
        console.rule(f"[bold]{step.name}")
        started = time.perf_counter()
        try:
            step.run()
        except (Exception, SystemExit) as err:  # name the failing step; what finished stays on disk
            console.print(f"[red]demo failed at step '{step.name}':[/red] {err}", soft_wrap=True)
            console.print(f"finished steps are kept in {args.work}; fix the cause and re-run to continue")
            return 1
        timings[step.name] = round(time.perf_counter() - started, 1)
        timings_file.write_text(json.dumps(timings, indent=2) + "\n")
    from eval.export import export

    step_times = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    written = write_report(args.work / "report", chain.report, pdf=True,
                           subtitle=f"{chain.subtitle}; demo step times: {step_times}")
    console.print(f"step times: {step_times}")
    console.print(f"[green]report:[/green] {written.page.resolve()} and {written.pdf.resolve()} "
                  f"(PDF made by {written.pdf_renderer})")
    submission = args.work / "submission"
    try:
        if not submission.exists():
            export(chain.report.run, submission, chain.shards / "test", written.page.parent)
    except UserError as err:
        console.print(f"[red]demo failed at step 'hand-in':[/red] {err}", soft_wrap=True)
        return 1
    console.print(f"[green]hand-in folder:[/green] {submission.resolve()} (python -m eval.export)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
