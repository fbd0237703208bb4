"""The install's choice of PyTorch and DALI builds by NVIDIA driver, and the commands' refusal to fall back to the CPU
when nvidia-smi lists a GPU that torch cannot use. A fake `nvidia-smi` on PATH plays the driver; nothing is
downloaded (setup.sh runs against a stand-in `.venv/bin/python` that records its arguments)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

H100_R535 = "NVIDIA H100 80GB HBM3, 535.183.01"
H100_R580 = "NVIDIA H100 80GB HBM3, 580.65.06"


def fake_tool(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def nvidia_smi(tmp_path, monkeypatch):
    """Put a fake nvidia-smi printing `lines` (and exiting with `code`) first on PATH."""
    def install(lines: str, code: int = 0) -> None:
        fake_tool(tmp_path / "bin", "nvidia-smi", f"cat <<'END'\n{lines}\nEND\nexit {code}")
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return install


def choose_builds(path: str) -> str:
    """What scripts/setup.sh reads: `python3 common/nvidia.py` with the given PATH."""
    result = subprocess.run([sys.executable, str(REPO / "common" / "nvidia.py")], capture_output=True, text=True,
                            env={**os.environ, "PATH": path}, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize("lines, code, expected", [
    (H100_R535, 0, "https://download.pytorch.org/whl/cu126 dali-cuda120"),
    ("NVIDIA A100-SXM4-80GB, 570.124.06\nNVIDIA A100-SXM4-80GB, 570.124.06", 0,
     "https://download.pytorch.org/whl/cu126 dali-cuda120"),
    (H100_R580, 0, "default dali-cuda130"),
    ("NVIDIA B200, 590.10", 0, "default dali-cuda130"),
    # A driver that is installed but not loaded: nvidia-smi fails and lists nothing.
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9, "default dali-cuda130"),
])
def test_builds_follow_the_driver(nvidia_smi, lines, code, expected):
    nvidia_smi(lines, code)
    assert choose_builds(os.environ["PATH"]) == expected


def test_without_nvidia_smi_the_default_builds(tmp_path):
    (tmp_path / "empty").mkdir()
    assert choose_builds(str(tmp_path / "empty")) == "default dali-cuda130"


def stage_setup(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of what setup.sh reads, with a `.venv/bin/python` that logs each call instead of installing."""
    repo = tmp_path / "repo"
    for name in ("scripts/setup.sh", "pyproject.toml", "common/nvidia.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, repo / name)
    log = tmp_path / "pip.log"
    fake_tool(repo / ".venv" / "bin", "python", f'echo "$*" >> {log}')
    return repo, log


@pytest.mark.parametrize("lines, torch_command, extra", [
    (H100_R535, "-m pip install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cu126",
     "dali-cuda120"),
    (H100_R580, None, "dali-cuda130"),
])
def test_setup_installs_the_driver_s_builds(tmp_path, nvidia_smi, lines, torch_command, extra):
    nvidia_smi(lines)
    repo, log = stage_setup(tmp_path)
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=env, check=True, capture_output=True)
    calls = log.read_text().splitlines()
    project = f"-m pip install --quiet -e .[test,{extra}]"
    assert project in calls
    if torch_command:
        assert calls.index(torch_command) < calls.index(project)  # the CUDA 12.6 torch first
    else:
        assert not [call for call in calls if "--index-url" in call]
    # Installed: a second run does nothing; another driver's choice installs again.
    log.unlink()
    subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=env, check=True, capture_output=True)
    assert not log.exists()
    nvidia_smi(H100_R580 if torch_command else H100_R535)
    subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=env, check=True, capture_output=True)
    assert log.exists()


def test_refusal_names_the_gpu_driver_and_torch_build(nvidia_smi):
    from common.device import require_usable_gpu
    from common.errors import UserError

    assert not torch.cuda.is_available()  # this test plays a GPU that torch cannot use
    nvidia_smi(H100_R535)
    with pytest.raises(UserError) as err:
        require_usable_gpu(allow_cpu=False)
    message = str(err.value)
    assert "'NVIDIA H100 80GB HBM3' (driver 535.183.01)" in message and torch.__version__ in message
    assert "CUDA 12.6" in message and "--cpu" in message and "\n" not in message
    require_usable_gpu(allow_cpu=True)  # asked for the CPU: goes on


def test_no_refusal_without_a_listed_gpu(nvidia_smi, tmp_path, monkeypatch):
    from common.device import require_usable_gpu

    nvidia_smi("No devices were found", 6)
    require_usable_gpu(allow_cpu=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    require_usable_gpu(allow_cpu=False)


def test_commands_stop_with_one_line(nvidia_smi, tmp_path, capsys):
    """train, eval, bonus_1 and the demo stop before touching their inputs (none exist here)."""
    import bonus_1
    import demo
    from eval.cli import main as eval_main
    from train.run import main as train_main

    nvidia_smi(H100_R535)
    missing = str(tmp_path / "missing")
    commands = [(train_main, ["--shards", missing, "--out", str(tmp_path / "run")]),
                (eval_main, ["--checkpoint", missing, "--shards", missing]),
                (bonus_1.main, ["--checkpoint", missing, "--shards", missing]),
                (demo.main, ["--work", str(tmp_path / "demo")])]
    for main, argv in commands:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: nvidia-smi lists GPU") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()
