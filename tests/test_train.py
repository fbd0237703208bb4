"""The trainer: schedules, learning, exact resume, 2 real processes, non-finite loss, figures, checkpoints."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.checkpoint import CheckpointError, list_checkpoints, load_vae
from train.objective import STAT_NAMES, VAEObjective, kl_weight, lr_factor
from train.perceptual import PerceptualError, build_perceptual
from train.phases import AdversarialPhases
from train.run import NonFiniteLoss, main as train_main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--loader", "resident", "--batch-size", "16", "--warmup-images", "80",
        "--log-every", "2", "--kl-anneal-images", "320", "--compile", "off", "--precision", "fp32"]


def _run(shards: Path, out: Path, *flags: str) -> None:
    assert train_main(["--shards", str(shards), "--out", str(out), *TINY, *flags]) == 0


def _training_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")  # Accelerate's copy of the trained (non-EMA) weights


@pytest.mark.parametrize("aae_lambda, moves", [(0.5, True), (1.0, False)])
def test_adversarial_phases_update_only_the_discriminator_and_the_encoder(aae_lambda, moves):
    """The regularisation phase after a reconstruction step: the discriminator and the encoder move (at the
    reconstruction's rate x (1 - lambda) / lambda), the decoder never; lambda = 1 is a plain autoencoder. The
    reconstruction step (and so DDP) sees the encoder and decoder only."""
    from model import create_vae

    torch.manual_seed(0)
    vae = create_vae("tiny", model="aae", latent_dim=8)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    objective = VAEObjective(vae)
    assert {name.split(".")[1] for name, _ in objective.named_parameters()} == {"encoder", "decoder"}
    _, stats, codes = objective(images, torch.tensor(1.0))
    assert codes.shape == (4, 8) and not codes.requires_grad and len(stats) == len(STAT_NAMES)
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    phases = AdversarialPhases(vae, aae_lambda, weight_decay=0.0, grad_clip=1.0)
    generator_loss, critic_loss, accuracy = phases.step(images, codes, torch.randn_like(codes), lr=1e-3,
                                                        reduce=lambda t: t).tolist()
    assert generator_loss > 0 and critic_loss > 0 and 0 <= accuracy <= 1
    changed = {name.split(".")[0] for name, p in vae.named_parameters() if not torch.equal(p, before[name])}
    assert changed == ({"discriminator", "encoder"} if moves else set())
    assert all(p.grad is None for p in vae.parameters())


def test_kl_annealing_and_lr_schedules_in_images():
    assert kl_weight(0, "linear", 1.0, 100, 0.5) == 0.0
    assert kl_weight(50, "linear", 2.0, 100, 0.5) == pytest.approx(1.0)
    assert kl_weight(500, "linear", 2.0, 100, 0.5) == 2.0
    assert [kl_weight(s, "cyclical", 1.0, 100, 0.5) for s in (0, 25, 50, 99, 100, 125)] == [0, 0.5, 1, 1, 0, 0.5]
    assert kl_weight(3, "none", 0.7, 100, 0.5) == 0.7
    # The rate of the step that completes `images` images: batches of 16 warm up over 160 images in 10 steps.
    assert lr_factor(16, 160, 1760, 0.1) == pytest.approx(0.1)
    assert lr_factor(160, 160, 1760, 0.1) == pytest.approx(1.0)
    assert lr_factor(960, 160, 1760, 0.1) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_factor(1760, 160, 1760, 0.1) == pytest.approx(0.1)


@pytest.mark.slow
def test_loss_falls_and_run_writes_figures_metrics_and_a_loadable_checkpoint(synthetic_shards, tmp_path):
    out = tmp_path / "run"
    _run(synthetic_shards, out, "--epochs", "4", "--lr", "2e-3", "--kl-anneal", "none", "--beta", "0.05")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in steps if r["kind"] == "step"]
    first, last = logged[0], logged[-1]
    assert last["gaussian_nll"] < first["gaussian_nll"] - 0.5 * abs(first["gaussian_nll"]) - 5000, (first, last)
    epochs = [r for r in steps if r["kind"] == "epoch"]
    assert len(epochs) == 4 and epochs[-1]["valid"]["images"] == json.loads(
        (synthetic_shards / "dataset.json").read_text())["counts"]["valid"]
    assert 0 <= last["data_wait_share"] < 1 and last["images_per_s"] > 0
    assert 0 < last["decoder_std"] < 255 and 0 < last["posterior_std"] <= 1.5
    for name in ("loss_curves.png", "diagnostics.png", "samples_init.png", "reconstructions_epoch003.png",
                 "interpolation_epoch003.png", "samples_epoch003.png"):
        assert (out / "figures" / name).stat().st_size > 1000, name
    vae, meta = load_vae(out)
    assert meta["step"] == last["step"] and vae.cfg.latent_dim == 128
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["ranks_in_sync"] and summary["world_size"] == 1


@pytest.mark.slow
def test_resume_equals_uninterrupted(synthetic_shards, tmp_path):
    # 14 steps cross an epoch boundary (the synthetic train split gives about 12 batches of 16) and the stop
    # at step 5 is mid-epoch, so loader position, noise, optimizer, schedules and EMA state all matter; the codes
    # are recentred every 3 steps, so the stop also falls between two recentrings (the code sums resume).
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    flags = ("--epochs", "3", "--no-figures", "--recentre-images", "48")
    _run(synthetic_shards, straight, *flags, "--max-steps", "14")
    _run(synthetic_shards, stopped, *flags, "--max-steps", "5")
    _run(synthetic_shards, stopped, *flags, "--max-steps", "14", "--resume", "latest")
    a = _training_weights(list_checkpoints(straight)[-1])
    b = _training_weights(list_checkpoints(stopped)[-1])
    assert list_checkpoints(stopped)[-1].name == "step-0000014"
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    ema_a, ema_b = load_file(list_checkpoints(straight)[-1] / "vae" / "model.safetensors"), load_file(
        list_checkpoints(stopped)[-1] / "vae" / "model.safetensors")
    for name in ema_a:
        torch.testing.assert_close(ema_a[name], ema_b[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_minutes_budget_ends_at_the_planned_step_with_a_validated_last_epoch(synthetic_shards, tmp_path):
    out = tmp_path / "budget"
    _run(synthetic_shards, out, "--minutes", "0.05", "--warmup-images", "80", "--no-figures")
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["planned_steps"] >= 5 and summary["step"] == summary["planned_steps"]
    steps_per_epoch = json.loads((synthetic_shards / "dataset.json").read_text())["counts"]["train"] // 16
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == summary["epoch"] == math.ceil(summary["step"] / steps_per_epoch)  # the last one may be partial
    assert epochs[-1]["step"] == summary["step"]


@pytest.mark.slow
def test_minutes_plan_is_recorded_and_resumes_exactly(synthetic_shards, tmp_path, monkeypatch):
    import train.run

    flags = ("--minutes", "0.2", "--warmup-images", "80", "--no-figures")
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    _run(synthetic_shards, stopped, *flags, "--max-steps", "6")  # planned after 4 steps, stopped at 6
    planned = json.loads((stopped / "train_summary.json").read_text())["planned_steps"]
    assert planned >= 5
    _run(synthetic_shards, stopped, *flags, "--max-steps", "14", "--resume", "latest")
    assert json.loads((stopped / "train_summary.json").read_text())["planned_steps"] == planned  # not re-planned

    plan = train.run.plan_budget  # an uninterrupted run whose timing plans the same number

    def same_plan(run, done, step_seconds):
        plan(run, done, step_seconds)
        if run.state.planned_steps:
            run.state.planned_steps = planned

    monkeypatch.setattr(train.run, "plan_budget", same_plan)
    _run(synthetic_shards, straight, *flags, "--max-steps", "14")
    a, b = (_training_weights(list_checkpoints(run)[-1]) for run in (straight, stopped))
    assert list_checkpoints(stopped)[-1].name == list_checkpoints(straight)[-1].name
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


# What a GPU run does by default, here on the CPU, on the smallest network with every kind of block (two stages):
# compiling it costs a quarter less than the tiny preset. One process trains at batch 8, as each of two ranks does
# at the global batch of 16: the one- and two-process bf16 tests build the same graph, so inductor's on-disk cache
# serves the second (a cold compile is about a minute here).
SMALL_NET = ("--channels", "8,16", "--depths", "1,1", "--latent-dim", "16")
GPU_PATH = ("--compile", "on", "--precision", "bf16", *SMALL_NET)
ONE_RANK_BATCH = ("--batch-size", "8")


def _torchrun(shards: Path, out: Path, *flags: str) -> dict:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
               str(REPO / "train" / "run.py"), "--shards", str(shards), "--out", str(out), *TINY, *flags]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "train_summary.json").read_text())


def _check_gpu_path_run(out: Path, shards: Path, summary: dict, steps: int) -> None:
    """Compiled, bf16, finite, and the checkpoint evaluates."""
    import bonus_1

    assert summary["compiled"] and summary["mixed_precision"] == "bf16" and summary["step"] == steps
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged and all(math.isfinite(r["loss"]) for r in logged if r["kind"] == "step")
    assert bonus_1.main(["--checkpoint", str(out), "--shards", str(shards / "test"), "--out", str(out / "eval")]) == 0
    report = json.loads((out / "eval" / "bonus_1-test.json").read_text())
    assert math.isfinite(report["harmonic"]["H"]) and report["checkpoint"].endswith(f"step-{steps:07d}/vae")


def _script(shards: Path, out: Path, *flags: str) -> dict:
    """train/run.py in its own process, as a user runs it (Accelerate's precision is fixed once per process)."""
    command = [sys.executable, str(REPO / "train" / "run.py"), "--shards", str(shards), "--out", str(out), *TINY,
               *flags]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "train_summary.json").read_text())


@pytest.mark.slow
def test_compiled_bf16_training_on_the_cpu_evaluates(synthetic_shards, tmp_path):
    """torch.compile of the objective (inductor's CPU backend) and bf16 autocast through Accelerate, in one process
    (compiled runs resume in the two-process test below, and compiled and eager ones each other after it)."""
    out = tmp_path / "compiled"
    summary = _script(synthetic_shards, out, *GPU_PATH, *ONE_RANK_BATCH, "--epochs", "2", "--max-steps", "3",
                      "--no-figures")
    _check_gpu_path_run(out, synthetic_shards, summary, 3)


@pytest.mark.slow
def test_two_compiled_bf16_processes_stay_in_sync_and_resume(synthetic_shards, tmp_path):
    """Compile once, then DDP, in a real 2-process run of one epoch; resumed for a second by another such run."""
    out = tmp_path / "ddp"
    summary = _torchrun(synthetic_shards, out, *GPU_PATH, "--epochs", "1", "--no-figures")
    assert summary["world_size"] == 2 and summary["ranks_in_sync"]
    assert [p.name for p in list_checkpoints(out)] == [f"step-{summary['step']:07d}"]
    dataset = json.loads((synthetic_shards / "dataset.json").read_text())
    steps = dataset["counts"]["train"] // 16  # a global batch of 16: 8 on each rank
    assert summary["last_epoch"]["valid"]["images"] == dataset["counts"]["valid"]
    _check_gpu_path_run(out, synthetic_shards, summary, steps)
    summary = _torchrun(synthetic_shards, out, *GPU_PATH, "--epochs", "2", "--no-figures", "--resume", "latest")
    assert summary["ranks_in_sync"] and summary["epoch"] == 2
    _check_gpu_path_run(out, synthetic_shards, summary, 2 * steps)


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_last_good_state(synthetic_shards, tmp_path, monkeypatch):
    import train.run

    schedule = train.run.kl_weight  # a non-finite KL weight at step 3 makes the loss non-finite there
    monkeypatch.setattr(train.run, "kl_weight",
                        lambda images, *args: math.nan if images == 3 * 16 else schedule(images, *args))
    out, straight = tmp_path / "nan", tmp_path / "straight"
    # The flag is read every --log-every steps: the run notices at step 4 and saves the state before step 3.
    with pytest.raises(NonFiniteLoss, match=r"step 3;.*step-0000003"):
        _run(synthetic_shards, out, "--epochs", "1", "--no-figures", "--log-every", "4")
    weights = _training_weights(list_checkpoints(out)[-1])
    assert all(torch.isfinite(value).all() for value in weights.values())
    monkeypatch.setattr(train.run, "kl_weight", schedule)
    _run(synthetic_shards, straight, "--epochs", "1", "--no-figures", "--max-steps", "3")
    for name, value in _training_weights(list_checkpoints(straight)[-1]).items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=name)  # the last good state, exactly


def test_checkpoint_errors_name_the_path(tmp_path, synthetic_shards):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_vae(tmp_path)
    out = tmp_path / "run"
    _run(synthetic_shards, out, "--epochs", "1", "--max-steps", "2", "--no-figures")
    folder = list_checkpoints(out)[-1] / "vae"
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["latent_dim"] = 256
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model.safetensors: weights do not match"):
        load_vae(folder)


def test_perceptual_network_needs_local_weights(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PerceptualError, match=r"not in the local cache .*resnet18"):
        build_perceptual("torchvision:resnet18", torch.device("cpu"))
    # With weights in the cache (random ones here), the loss is 0 for identical images and grows with noise.
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "hub" / "checkpoints" / Path(url).name)
    loss = build_perceptual("torchvision:resnet18", torch.device("cpu"))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(loss(x, x), torch.zeros(2))
    assert (loss(x + 0.3 * torch.randn_like(x), x) > 0).all()
    assert not math.isnan(float(loss(x, x).sum()))


def test_perceptual_loss_from_the_projects_own_classifier(tmp_path):
    from model.classifier import AttributeClassifier, ClassifierConfig, save_classifier
    from train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=str(tmp_path / "missing")):
        build_perceptual(f"classifier:{tmp_path / 'missing'}", torch.device("cpu"))
    torch.manual_seed(0)
    save_classifier(tmp_path / "cls", AttributeClassifier(ClassifierConfig(width=8, attribute_names=("A", "B"))), {})
    loss = build_perceptual(f"classifier:{tmp_path / 'cls'}", torch.device("cpu"))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(loss(x, x), torch.zeros(2))
    assert (loss(x + 0.3 * torch.randn_like(x), x) > 0).all()


@pytest.mark.slow
def test_train_bench_times_variants_loaders_and_a_whole_epoch(synthetic_shards, tmp_path):
    from train.bench import main as bench_main

    out = tmp_path / "train.json"
    assert bench_main(["--shards", str(synthetic_shards), "--steps", "2", "--warmup", "1", "--batch-size", "16",
                       "--variants", "eager-fp32,eager-bf16", "--loaders", "resident", "--epoch", "--json",
                       str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and [(r["step"], r["variant"]) for r in result["rows"]] == [
        ("bare", "eager-fp32"), ("bare", "eager-bf16"), ("trainer", "eager-fp32"), ("bare", "eager-fp32")]
    trainer = result["rows"][2]  # timed in turns with the bare step
    assert trainer["vs_bare"] == pytest.approx(trainer["images_per_s"] / trainer["bare_alternated_images_per_s"])
    assert all(r["images_per_s"] > 0 and r["peak_gib"] is None for r in result["rows"])  # no CUDA memory here
    # Counted operations: the tiny preset's convolutions and matmuls, forward + backward (0.47 GFLOP per image).
    assert result["gflop_per_image"] == pytest.approx(0.474, rel=0.01)
    assert result["rows"][0]["gflops"] == pytest.approx(result["rows"][0]["images_per_s"] * 0.474, rel=0.01)
    train_count = json.loads((synthetic_shards / "dataset.json").read_text())["counts"]["train"]
    assert result["epoch"]["epoch_images"] == train_count // 16 * 16 and result["epoch"]["epoch_seconds"] > 0


def test_noise_is_keyed_by_image_not_by_batch_or_rank():
    """Every image draws its own eps (no two images, so no two ranks, share draws), the same wherever it sits in
    a batch, however many draws are taken; it changes with the epoch and the seed; the draws are standard normal."""
    from model.noise import PRIOR, image_seeds, keyed_normal

    keys = [f"{i:06d}" for i in range(512)]
    seeds = image_seeds(keys, 0, "cpu", epoch=1)
    eps = keyed_normal(seeds, 2, 64)
    assert eps.shape == (2, 512, 64)
    half = keyed_normal(image_seeds(keys[256:][::-1], 0, "cpu", epoch=1), 1, 64)[0]  # "rank 1", reversed
    assert torch.equal(half, eps[0, 256:].flip(0))
    assert not torch.equal(eps[0, :256], eps[0, 256:])  # the two halves ("ranks") draw differently
    assert len(torch.unique(eps[0, :, 0])) == 512
    assert not torch.equal(eps[0], keyed_normal(image_seeds(keys, 0, "cpu", epoch=2), 1, 64)[0])
    assert not torch.equal(eps[0], keyed_normal(image_seeds(keys, 1, "cpu", epoch=1), 1, 64)[0])
    assert not torch.equal(eps[0], keyed_normal(seeds, 1, 64, PRIOR)[0])
    flat = eps.flatten().double()
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01
    assert abs((flat**4).mean() - 3) < 0.05 and abs((flat.abs() < 1).double().mean() - 0.6827) < 0.005


def test_launches_that_cannot_work_stop_with_one_line(synthetic_shards, tmp_path, capsys):
    def fails(*flags: str) -> str:
        code = train_main(["--shards", str(synthetic_shards), "--out", str(tmp_path / "run"), *TINY, "--epochs", "1",
                           *flags])  # an epoch budget, not the cpu recipe's minutes (whose warm-up check comes first)
        err = capsys.readouterr().err.strip()
        assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
        return err

    assert "--batch-size is the global batch" in fails("--batch-size", "4096")
    assert "--warmup-images 48 or more" in fails("--minutes", "1", "--warmup-images", "16")
    assert "lacks model.safetensors" in fails("--resume", str(tmp_path / "nowhere"))
    assert "--out must be a folder all nodes share" in fails("--resume", str(tmp_path / "nowhere"))
    _run(synthetic_shards, tmp_path / "run", "--epochs", "1", "--max-steps", "1", "--no-figures")
    assert "latent_dim 128 (checkpoint) vs 64 (this launch)" in fails("--resume", "latest", "--latent-dim", "64")
    assert "use --batch-size 16" in fails("--resume", "latest", "--batch-size", "32")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 16  # the run's, untouched
    partial = list_checkpoints(tmp_path / "run")[-1]
    (partial / "trainer.pt").unlink()  # an interrupted copy, or another node's view of a node-local folder
    assert f"{partial} lacks trainer.pt" in fails("--resume", str(partial))


def _weights_change(a: dict, b: dict, start: dict) -> float:
    """|a - b| / |a - start| over all floating-point tensors: how far two runs from `start` ended apart,
    relative to how far they moved."""
    names = [n for n in a if a[n].is_floating_point()]
    apart = sum(float((a[n].double() - b[n].double()).square().sum()) for n in names)
    moved = sum(float((a[n].double() - start[n].double()).square().sum()) for n in names)
    return math.sqrt(apart / moved)


def _initial_weights(**config) -> dict[str, torch.Tensor]:
    """The weights a run of the tiny preset (with `config` over it) starts from."""
    from accelerate.utils import set_seed

    from model import create_vae

    set_seed(0)  # what setup does before building the model
    return create_vae("tiny", **config).state_dict()


@pytest.mark.slow
def test_two_processes_train_the_adversarial_autoencoder_in_sync(synthetic_shards, tmp_path):
    """The AAE's discriminator lies outside the DDP-wrapped reconstruction step; its own phases average their
    gradients by hand. Two ranks end with the same weights, discriminator included, and resume from its state."""
    out = tmp_path / "aae"
    flags = ("--model", "aae", "--epochs", "1", "--no-figures")
    _torchrun(synthetic_shards, out, *flags, "--max-steps", "2")
    summary = _torchrun(synthetic_shards, out, *flags, "--max-steps", "4", "--resume", "latest")
    assert summary["step"] == 4 and summary["ranks_in_sync"]
    weights = _training_weights(list_checkpoints(out)[-1])
    assert any(name.startswith("discriminator.") for name in weights)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["discriminator_loss"] > 0 and 0 <= r["discriminator_accuracy"] <= 1
               for r in logged if r["kind"] == "step")


@pytest.mark.slow
def test_one_and_two_processes_train_alike_and_resume_each_other(synthetic_shards, tmp_path):
    """A global batch of 16 as 16 on one process or 8 + 8 on two: the same images, the same keyed noise and
    schedules, so the same training up to the order of float sums. Two ranks stopped and resumed equal the
    uninterrupted two-rank run bit for bit (the stop at step 3 falls between two recentrings, so each rank's
    code sums must come back); a two-rank checkpoint resumes on one process and a one-process checkpoint on two,
    at the same images seen."""
    import shutil

    flags = ("--epochs", "2", "--no-figures", "--recentre-images", "32")  # recentred at steps 2, 4, 6
    one, one_stopped, two, two_stopped = (tmp_path / name for name in ("one", "one3", "two", "two3"))
    _run(synthetic_shards, one, *flags, "--max-steps", "6")
    _run(synthetic_shards, one_stopped, *flags, "--max-steps", "3")
    _torchrun(synthetic_shards, two, *flags, "--max-steps", "6")
    _torchrun(synthetic_shards, two_stopped, *flags, "--max-steps", "3")
    two_to_one, one_to_two = tmp_path / "two-to-one", tmp_path / "one-to-two"
    shutil.copytree(two_stopped, two_to_one)
    shutil.copytree(one_stopped, one_to_two)
    summary = _torchrun(synthetic_shards, two_stopped, *flags, "--max-steps", "6", "--resume", "latest")
    assert summary["step"] == 6 and summary["images"] == 96 and summary["ranks_in_sync"]
    _run(synthetic_shards, two_to_one, *flags, "--max-steps", "6", "--resume", "latest")
    _torchrun(synthetic_shards, one_to_two, *flags, "--max-steps", "6", "--resume", "latest")

    def schedule(run: Path) -> list[tuple]:  # what each logged step trained with, against the images seen
        return [(r["images"], r["lr"], r["kl_weight"]) for r in map(json.loads, (run / "metrics.jsonl").open())
                if r["kind"] == "step"]

    assert len(schedule(one)) == 3 and schedule(one) == schedule(two)
    assert schedule(one)[0][1] < schedule(one)[1][1] and schedule(one)[0][2] < schedule(one)[1][2]  # warming up
    final = {name: _training_weights(list_checkpoints(run)[-1])
             for name, run in (("one", one), ("two", two), ("two resumed", two_stopped), ("two to one", two_to_one),
                               ("one to two", one_to_two))}
    assert all(list_checkpoints(run)[-1].name == "step-0000006"
               for run in (one, two, two_stopped, two_to_one, one_to_two))
    for name, value in final["two"].items():
        torch.testing.assert_close(final["two resumed"][name], value, rtol=0, atol=0, msg=name)
    start = _initial_weights()
    for other in ("two", "two to one", "one to two"):  # float sums in another order only
        assert _weights_change(final["one"], final[other], start) < 1e-4, other  # 3e-7 measured


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("on", "off"), ("off", "on")])
def test_compiled_and_eager_checkpoints_resume_each_other(synthetic_shards, tmp_path, first, then):
    """The checkpoint holds the VAE's own keys, not the compiled module's (`_orig_mod.`): a compiled run resumes
    eager and an eager one compiled, at the same step, training on as the uninterrupted run does (to the
    compiler's rounding)."""
    flags = (*SMALL_NET, "--epochs", "2", "--no-figures")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _run(synthetic_shards, straight, *flags, "--max-steps", "4")
    _run(synthetic_shards, stopped, *flags, "--max-steps", "2", "--compile", first)
    _run(synthetic_shards, stopped, *flags, "--max-steps", "4", "--compile", then, "--resume", "latest")
    a, b = (_training_weights(list_checkpoints(run)[-1]) for run in (straight, stopped))
    assert list_checkpoints(stopped)[-1].name == "step-0000004" and a.keys() == b.keys()
    assert _weights_change(a, b, _initial_weights(channels=(8, 16), depths=(1, 1), latent_dim=16)) < 1e-3


def test_the_training_step_never_reads_a_device_value_on_the_host(monkeypatch):
    """TrainStep (noise, objective, clip, fused AdamW, EMA, sums) with every way of reading a tensor's value on the
    host made to fail (on a GPU each would wait for the device): two steps, the second non-finite, run through;
    the skip flag is read afterwards, when the trainer looks (and the non-finite step changed no weight)."""
    from accelerate import Accelerator

    from model import create_vae
    from model.noise import image_seeds
    from train.objective import EMA
    from train.step import TrainStep, make_optimizer

    accelerator = Accelerator(mixed_precision="no")
    torch.manual_seed(0)
    vae = create_vae("tiny", latent_dim=8)
    module, optimizer = accelerator.prepare(VAEObjective(vae), make_optimizer(vae, 1e-3, 0.01))
    ema = EMA(vae, 0.999)
    step = TrainStep(vae, module, optimizer, ema, accelerator, grad_clip=1.0)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    seeds = image_seeds(["a", "b", "c", "d"], 0, "cpu", epoch=0)
    step(images, seeds, 0, 0.5, 1e-3)  # the optimizer's state is made here

    def host_read(*args, **kwargs):
        raise AssertionError("the training step read a device value on the host")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    step(images, seeds, 1, 0.5, 1e-3)
    weights = {name: value.clone() for name, value in vae.state_dict().items()}
    averaged = {name: value.clone() for name, value in ema.state_dict().items()}
    step(images, seeds, 2, math.nan, 1e-3)
    monkeypatch.undo()
    assert step.first_bad_step() == 2
    for name, value in vae.state_dict().items():
        assert torch.equal(value, weights[name]) and torch.equal(ema.state_dict()[name], averaged[name]), name
