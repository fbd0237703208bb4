"""`python -m eval.export RUN --out submission/`: the folder a student hands in.

    submission/
      checkpoint/model.safetensors, model.json   the EMA weights and config (no pickles: safe to load from anyone)
      bonus_1-test.json, bonus_1.txt             bonus_1.py run against checkpoint/: its report, command and output
      report/                                    the report page and its PDF (with --report, e.g. runs/demo/report)

From inside the folder, `python <repo>/bonus_1.py --shards <shards>/test` finds `checkpoint/` by itself.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from common.errors import UserError, report_user_error
from model.io import MODEL_JSON, MODEL_WEIGHTS, load_vae_folder
from train.checkpoint import resolve_vae_folder

REPO = Path(__file__).resolve().parents[1]
HANDIN_FOLDER = "checkpoint"  # the folder bonus_1.py looks for when no --checkpoint is given

console = Console()


class ExportError(UserError):
    pass


def export(run: Path, out: Path, shards: Path | None = None, report: Path | None = None) -> str:
    """Write the hand-in folder; returns bonus_1.py's printed output. Refuses a non-empty `out`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty folder; choose a new one (nothing was overwritten)")
    folder = resolve_vae_folder(run)
    _, meta = load_vae_folder(folder)  # refuse a damaged or mismatched checkpoint before writing anything
    split = Path(shards) if shards else Path(meta.get("shards", "shards")) / "test"
    if not split.is_dir():
        raise ExportError(f"{split}: test split not found (the checkpoint was trained on {meta.get('shards')}); "
                          f"pass --shards SHARDS/test")
    if report is not None and not (report / "index.html").is_file():
        raise ExportError(f"{report / 'index.html'}: missing; pass the folder the demo's report was written to")
    (out / HANDIN_FOLDER).mkdir(parents=True)
    for name in (MODEL_WEIGHTS, MODEL_JSON):
        shutil.copyfile(folder / name, out / HANDIN_FOLDER / name)
    command = ["python", str(REPO / "bonus_1.py"), "--shards", str(split.resolve()), "--out", "."]
    result = subprocess.run([sys.executable, *command[1:]], cwd=out, capture_output=True, text=True,
                            env=dict(os.environ, COLUMNS="120"))  # rich wraps at 80 columns without a terminal
    if result.returncode != 0:
        raise ExportError(f"bonus_1.py failed on the exported checkpoint: {result.stderr.strip()[-500:]}")
    shown = f"$ cd {shlex.quote(str(out.resolve()))} && {shlex.join(command)}\n{result.stdout}"
    (out / "bonus_1.txt").write_text(shown)
    if report is not None:
        shutil.copytree(report, out / "report")
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.export", description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (its latest checkpoint), a run checkpoint or a vae/ folder")
    parser.add_argument("--out", type=Path, required=True, help="the hand-in folder (new or empty)")
    parser.add_argument("--shards", type=Path, default=None,
                        help="the test split bonus_1.py scores (default: the test split the run trained beside)")
    parser.add_argument("--report", type=Path, default=None, help="a report folder to include (e.g. runs/demo/report)")
    args = parser.parse_args(argv)
    try:
        shown = export(args.run, args.out, args.shards, args.report)
    except UserError as err:  # ExportError, CheckpointError
        return report_user_error(err)
    console.print(shown, highlight=False, markup=False)
    console.print(f"hand-in folder: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
