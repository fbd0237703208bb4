"""One function per report section, each returning a `Section` of blocks read from files the other stages wrote
(the run's config, metrics.jsonl and figures, eval / bonus JSON, an autoencoder run and its eval, the quality
check, a sweep folder, the edit folders, benchmark JSON). Tables carry the numbers; text only says what a
table or figure is."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from eval.core import CAVEAT
from quality import HARMONIC_TARGET
from report.blocks import (Figure, Figures, Heading, Section, Table, Text, fields, format_value, matrix_table,
                           records_table)


def _latest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def read_json(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path is not None and Path(path).is_file() else None


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


# ----------------------------------------------------------------------------------------------- samples, curves

HEALTH_FIGURES = (("reconstructions_epoch*.png", "reconstructions (decoder mean at μ), last epoch, EMA weights"),
                  ("samples_epoch*.png", "prior samples z = T·ε at temperatures T = 0.2, 0.5, 1.0, 1.5"),
                  ("interpolation_epoch*.png", "interpolation z = a·z₁ + (1−a)·z₂ between test images (μ)"),
                  ("loss_curves.png", "KL and Gaussian NLL, train and valid (nats / image)"),
                  ("diagnostics.png", "bits/dim, the decoder's σ and the posterior's σ over training"),
                  ("samples_init.png", "prior samples before training: what the untrained decoder draws"))


def epoch_table(run: Path) -> Table | None:
    records = _read_jsonl(run / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    rows = []
    for epoch in (r for r in records if r["kind"] == "epoch"):
        # Each logged window's rate; the median keeps the window that holds validation from dominating.
        windows = [s for s in steps if s["epoch"] == epoch["epoch"]]
        rate = statistics.median(s["images_per_s"] for s in windows) if windows else None
        wait = statistics.median(s["data_wait_share"] for s in windows) if windows else None
        valid = epoch["valid"]
        rows.append([epoch["epoch"], epoch["step"], epoch["train"]["gaussian_nll"], epoch["train"]["kl"],
                     valid["gaussian_nll"], valid["kl"], valid["bpd"], valid["harmonic"], valid["active_units"],
                     rate, None if wait is None else f"{100 * wait:.1f} %"])
    if not rows:
        return None
    return Table(["epoch", "step", "train Gaussian NLL", "train KL", "valid Gaussian NLL", "valid KL",
                  "valid bits/dim", "valid H", "active", "train img/s (median)", "data wait (median)"], rows)


def health_section(run: Path) -> Section:
    """What the course grades first: reconstructions, temperature samples, interpolations and the loss curves."""
    section = Section("Samples and training curves")
    found = [Figure(path, caption) for pattern, caption in HEALTH_FIGURES
             if (path := _latest(run / "figures", pattern)) is not None]
    table = epoch_table(run)
    if not found and table is None:
        section.blocks.append(Text("No metrics or figures in the run folder."))
        return section
    section.blocks.append(Figures(found))
    if table is not None:
        section.blocks += [Heading(f"per epoch ({len(table.rows)} epochs)"), table]
    return section


# ------------------------------------------------------------------------------------------ autoencoder vs VAE

# The grids an autoencoder and a VAE are compared on: each run's newest epoch.
COMPARED_FIGURES = (("reconstructions_epoch*.png", "reconstructions (decoder mean at z = μ)"),
                    ("interpolation_epoch*.png", "interpolation z = a·z₁ + (1−a)·z₂ of two test images' μ"),
                    ("samples_epoch*.png", "prior samples z = T·ε, ε ~ N(0, I), T = 0.2, 0.5, 1.0, 1.5"))
RUN_PLACES = ("shards", "out", "resume")  # settings that say where a run lives, not how it trained


def _budget(run: Path) -> str:
    summary = read_json(run / "train_summary.json") or {}
    if not summary:
        return ""
    seconds = f", {summary['train_seconds']:.0f} s" if "train_seconds" in summary else ""
    epochs = f"{summary['epoch']} epoch" + ("" if summary["epoch"] == 1 else "s")
    return f"{summary['step']:,} steps, {epochs}{seconds}"


def settings_diff(ae_run: Path, run: Path) -> str:
    """The training settings in which the autoencoder's run differs from the VAE's, as 'name VAE → AE'."""
    ae, vae = read_json(ae_run / "config.json") or {}, read_json(run / "config.json") or {}
    keys = sorted(key for key in ae.keys() | vae.keys() if key not in RUN_PLACES and ae.get(key) != vae.get(key))
    return ", ".join(f"{key} {format_value(vae.get(key))} → {format_value(ae.get(key))}" for key in keys)


def _eigenvalue_range(match: dict) -> str | None:
    if match.get("cov_eigenvalue_min") is None:
        return None
    # A covariance's eigenvalues are >= 0; a tiny negative one (fewer images than components) is rounding.
    return f"{max(match['cov_eigenvalue_min'], 0.0):.2g} to {match['cov_eigenvalue_max']:.2g}"


# (where in the eval JSON, key, row label)
COMPARED_NUMBERS = (("metrics", "psnr", "test PSNR, decoder mean at μ (dB)"),
                    ("sample_quality", "fd_samples_t1", "Fréchet distance: prior samples, T = 1"),
                    ("sample_quality", "fd_reconstructions", "Fréchet distance: reconstructions"),
                    ("sample_quality", "detail_kept_reconstructions", "fine detail kept by reconstructions (1: all)"),
                    ("sample_quality", "fd_real_reference", "Fréchet distance: other real images (valid split)"),
                    ("prior_match", "cov_distance_to_identity",
                     "codes vs prior: |Cov(μ) − I|_F / √d (0: spread like N(0, I))"),
                    ("prior_match", "mean_rms", "codes vs prior: RMS of the mean of μ (0: centred)"))


def comparison_section(run: Path, eval_json: Path | None, ae_run: Path, ae_eval_json: Path | None) -> Section:
    """The autoencoder beside the VAE (the course's comparison): the same grids side by side, then the numbers."""
    section = Section("Autoencoder vs VAE", [Text(
        "The same network trained as a deterministic autoencoder (`--model ae`: z = μ, reconstruction loss only). "
        "Nothing in its loss ties the codes to N(0, I), so decoding z ~ N(0, I) shows what the prior samples of a "
        "model without the KL term look like. Left the autoencoder, right the VAE. For the VAE, Cov(μ) counts the "
        "means alone: a VAE whose aggregate posterior matches N(0, I) has Cov(μ) = I minus its mean posterior "
        "variance, so its distance stays above 0.")])
    differences = settings_diff(ae_run, run)
    if differences:
        section.blocks.append(Text(f"Training settings that differ (VAE → autoencoder): {differences}."))
    for pattern, caption in COMPARED_FIGURES:
        pair = [Figure(path, f"{name}: {caption}") for name, folder in (("autoencoder", ae_run), ("VAE", run))
                if (path := _latest(folder / "figures", pattern)) is not None]
        section.blocks.append(Figures(pair, side_by_side=True))
    evaluations = {"autoencoder": read_json(ae_eval_json), "VAE": read_json(eval_json)}
    if not all(evaluations.values()):
        missing = " and ".join(name for name, data in evaluations.items() if not data)
        section.blocks.append(Text(f"No test evaluation of the {missing}: no numbers to compare.", note=True))
        return section
    ae, vae = evaluations["autoencoder"], evaluations["VAE"]
    rows = [["training", _budget(ae_run), _budget(run)],
            *([label, (ae.get(part) or {}).get(key), (vae.get(part) or {}).get(key)]
              for part, key, label in COMPARED_NUMBERS),
            ["codes vs prior: eigenvalues of Cov(μ) (prior: all 1)",
             _eigenvalue_range(ae.get("prior_match") or {}), _eigenvalue_range(vae.get("prior_match") or {})]]
    section.blocks += [Table(["test split", "autoencoder", "VAE"], rows), fields(ae, "autoencoder eval: all fields")]
    return section


# ------------------------------------------------------------------------------------------------------ design

# The training settings shown in the design table (every other one is in "all fields").
OPTIMISATION_KEYS = ("optimizer", "lr", "batch_size", "warmup_steps", "min_lr_ratio", "epochs", "minutes",
                     "grad_clip", "ema_decay")
KL_KEYS = ("beta", "kl_anneal", "kl_anneal_steps", "perceptual")


def _settings(config: dict, keys: tuple[str, ...]) -> str:
    shown = {key: config[key] for key in keys if config.get(key) not in (None, "")}
    return ", ".join(f"{key.replace('_', ' ')} {value:g}" if isinstance(value, float) else
                     f"{key.replace('_', ' ')} {format_value(value)}" for key, value in shown.items())


def design_section(run: Path) -> Section:
    """The data, network, optimisation and run in one compact table; every field one click away."""
    config = read_json(run / "config.json") or {}
    summary = read_json(run / "train_summary.json") or {}
    model_json = read_json(_latest(run, "checkpoints/step-*/vae/model.json")) or {}
    model = dict(model_json.get("config", {}))
    dataset = read_json(Path(config["shards"]) / "dataset.json") if "shards" in config else None
    rows = []
    if dataset:
        counts = dataset["counts"]
        encoding = dataset["encoding"] + (f" (JPEG q{dataset['jpeg_quality']})" if dataset.get("jpeg_quality") else "")
        rows.append(("data", f"{counts['train']:,} / {counts['valid']:,} / {counts['test']:,} train / valid / test "
                             f"images, {dataset['image_size']}×{dataset['image_size']}, crop {dataset['crop']['name']}, "
                             f"{encoding} shards"))
    if model:
        rows.append(("model", f"{model_json.get('parameters', 0):,} parameters; stage widths "
                              f"{format_value(model['channels'])}, depths {format_value(model['depths'])}; latent "
                              f"{model['latent_dim']}; decoder likelihood {model['likelihood']}"))
    if config:
        rows += [("optimisation", _settings(config, OPTIMISATION_KEYS)), ("KL", _settings(config, KL_KEYS))]
    if summary:
        rows.append(("run", f"{summary['step']:,} steps on {summary['world_size']} rank(s), "
                            f"{summary.get('device', '?')}, mixed precision {summary.get('mixed_precision', '?')}, "
                            f"compiled {summary.get('compiled', '?')}"))
    training = {k: v for k, v in config.items() if k not in RUN_PLACES}
    run_fields = {k: v for k, v in summary.items() if k != "last_epoch"}
    return Section("Design and hyperparameters", [
        Text("The choices this run was trained with; docs/training.md gives the reasons for the defaults."),
        Table(["choice", "value"], [list(row) for row in rows]),
        fields({"model": model, "training": training, "run": run_fields, "data": dataset or {}})])


# ------------------------------------------------------------------------------------------------ test metrics

# (key in the metrics JSON, label, unit); the headline rows of the test-metrics table.
HEADLINE_METRICS = (
    ("images", "test images", ""),
    ("discretized_nll", "NLL −log p(x|z), discretized", "nats / image"),
    ("nll_bpd", "NLL", "bits / dim"),
    ("kl", "KL(q(z|x) ‖ p(z))", "nats / image"),
    ("kl_bits_per_component", "KL", "bits / latent component"),
    ("neg_elbo", "negative ELBO", "nats / image"),
    ("bpd", "negative ELBO", "bits / dim"),
    ("iw_bpd", "importance-weighted bound", "bits / dim"),
    ("harmonic_n", "harmonic metric n", ""),
    ("harmonic_k", "harmonic metric k", ""),
    ("harmonic", "harmonic metric H = 2nk/(n+k)", ""),
    ("harmonic_continuous", "other reading: H with the continuous training NLL", ""),
    ("harmonic_per_pixel", "other reading: H with n per pixel (D = 4,096)", ""),
    ("active_units", "active latent components", ""),
    ("psnr", "reconstruction PSNR (decoder mean at μ)", "dB"),
    ("gaussian_nll_bpd", "continuous Gaussian NLL", "bits / dim"),
)

SAMPLE_QUALITY_ROWS = (
    ("fd_real_reference", "Fréchet distance: other real images (valid split)"),
    ("fd_reconstructions", "Fréchet distance: reconstructions at μ"),
    ("detail_kept_reconstructions", "fine detail kept: reconstructions' Laplacian energy / the images'"),
    ("fd_samples_t0.2", "Fréchet distance: prior samples, T = 0.2"),
    ("fd_samples_t0.5", "Fréchet distance: prior samples, T = 0.5"),
    ("fd_samples_t1", "Fréchet distance: prior samples, T = 1.0"),
    ("fd_samples_t1.5", "Fréchet distance: prior samples, T = 1.5"),
    ("mean_face_psnr_t0.2", "mean-face PSNR of T = 0.2 samples (dB)"),
    ("mean_face_psnr_decode_zero", "mean-face PSNR of decode(0) (dB)"),
)


def metrics_section(eval_json: Path | None, bonus_json: Path | None) -> Section:
    """`python -m eval` and `bonus_1.py` side by side, the judge's sample quality, warnings and the H caveat."""
    evaluation, bonus = read_json(eval_json), read_json(bonus_json)
    columns = {name: data["metrics"] for name, data in (("python -m eval", evaluation), ("bonus_1.py", bonus)) if data}
    rows = []
    for key, label, unit in HEADLINE_METRICS:
        if any(key in metrics for metrics in columns.values()):
            if key == "iw_bpd":
                label += f" (K = {evaluation['iw_samples']})"
            rows.append([label, *(metrics.get(key) for metrics in columns.values()), unit])
    section = Section("Test metrics", [Table(["metric", *columns, "unit"], rows)])
    quality = (evaluation or {}).get("sample_quality")
    if quality:
        section.blocks += [
            Heading("sample quality in the judge classifier's feature space"),
            Text("Fréchet distance to the test images (lower is closer; other real images give the floor of what "
                 "is reachable), and how close temperature-0.2 samples and decode(0) come to the train split's mean "
                 "face. Not comparable with published FIDs (no pretrained Inception network is used)."),
            Table(["measure", "value"], [[label, quality[key]] for key, label in SAMPLE_QUALITY_ROWS])]
    fixed = (evaluation or {}).get("fixed_sigma")
    if fixed:
        section.blocks += [Heading("fixed-σ model: one global σ fitted on the valid split"),
                           Table(["setting", "value"], [list(row) for row in fixed.items()])]
    section.blocks += [Text(f"warning: {w}", note=True) for w in (evaluation or {}).get("warnings") or []]
    section.blocks.append(Text(CAVEAT, note=True))
    if evaluation:
        section.blocks += [Table(["unit", "meaning"], [list(row) for row in evaluation["units"].items()]),
                           Figures([Figure(p, p.stem.replace("_", " "))
                                    for p in sorted(Path(eval_json).parent.glob("*.png"))])]
    section.blocks += [fields(data, f"{name}: all fields")
                       for name, data in (("python -m eval", evaluation), ("bonus_1.py", bonus)) if data]
    return section


# ---------------------------------------------------------------------------------------------- quality targets

def quality_section(quality: dict) -> Section:
    """`python quality.py`'s table: each measured value beside the README's target, those not met highlighted."""
    checks = quality["checks"]
    rows = [[c["measure"], c["value"], c["target"], {True: "yes", False: "no", None: "-"}[c["met"]]] for c in checks]
    return Section("Quality targets", [
        Text(f"The README's targets for {quality['stated_for']} (`python quality.py`); not met: highlighted."),
        Table(["measure", "value", "target", "met"], rows,
              marked=[i for i, c in enumerate(checks) if c["met"] is False])])


# ------------------------------------------------------------------------------------------------------- sweep

def sweep_section(folder: Path) -> Section:
    """`python -m eval.sweep`'s figure and one row per configuration, those meeting the harmonic target marked."""
    section = Section("Latent size, β and rate sweep")
    data = read_json(folder / "sweep.json")
    if data is None:
        section.blocks.append(Text(f"No sweep.json in {folder}."))
        return section
    results = data["results"]
    misses = [HARMONIC_TARGET.misses(r) for r in results]
    rows = [[r["latent_dim"], f"{r['beta']:g}", f"{r['rate_target']:g} nats" if r.get("rate_target") else "-",
             r["bpd"], r["psnr"], r["harmonic"], r["harmonic_n"],
             r["harmonic_k"], r["kl"], f"{r['active_units']} / {r['latent_dim']}",
             "misses: " + ", ".join(m) if m else "meets"] for r, m in zip(results, misses)]
    flags = " ".join(data.get("train_flags", []))
    section.blocks += [
        Text(f"Every configuration trained for {data['minutes']:g} minutes" + (f" with `{flags}`" if flags else "")
             + " and evaluated on the test split (`python -m eval.sweep`). H alone rewards a small KL per component, "
               f"so it is read beside bits/dim, PSNR and the active components; target: {HARMONIC_TARGET}."),
        Table(["latent", "β", "KL held at", "bits/dim", "PSNR (dB)", "H", "n", "k", "KL (nats)", "active", "target"],
              rows,
              marked=[i for i, m in enumerate(misses) if not m])]
    if (folder / "sweep.png").is_file():
        section.blocks.append(Figures([Figure(folder / "sweep.png", "harmonic metric H against bits/dim and against "
                                                                    "PSNR, one point per configuration")]))
    return section


# ------------------------------------------------------------------------------------------------------- edits

def amplify_blocks(data: dict) -> list:
    subjects = len(data["subjects"])
    rows = [[c["direction"], f"{c['named_attribute']} ({c['named_direction']})",
             f"{c['judge_named_subjects']} / {subjects}",
             *(c["ends_vs_reconstruction"][end]["region_mean_abs_change"] for end in ("low", "high")),
             f"{c['region_area_share']:.0%}", f"{c['alpha_in_std'][0]:+.1f} .. {c['alpha_in_std'][-1]:+.1f}",
             c["ends_vs_reconstruction"]["high"]["psnr_to_reconstruction_db"]]
            for c in data["components"]]
    blocks = [Text(f"{data['basis']} basis, {data['active_directions']} active directions; α spans the train "
                   f"split's range of μ along each direction. A direction is named after the attribute the judge "
                   f"moves most; 'named' counts the subjects whose probability of it moves by at least "
                   f"{data['named_change']:g} between the two ends."),
              Table(["direction", "named attribute", "named", "grey levels changed, low end", "high end",
                     "area that changes", "α (data std)", "PSNR high end to reconstruction (dB)"], rows)]
    kl = data["latent_usage"].get("kl_per_component")
    if kl:
        blocks.append(Text(f"KL per component: half of it in {kl['directions_for_half']} components, 90 % in "
                           f"{kl['directions_for_90_percent']}, effective number {kl['effective_number']:.0f}."))
    return blocks + [Heading("ranking (top 10)"),
                     records_table(data["ranking"][:10], ["direction", "leading_attribute", "judge_prob_change",
                                                          "region_change", "score"])]


def guide_blocks(data: dict) -> list:
    methods = ("guided", "mean_difference_matched", "mean_difference_full")
    rows = [[c["change"], f"{c['guide_reached_target_prob']} / {len(c['subjects'])}",
             c["reconstruction"]["judge_success"], *(c[m]["judge_success_rate"] for m in methods),
             c["guided"]["other_attributes_mean_abs_change"],
             c["mean_difference_matched"]["other_attributes_mean_abs_change"],
             c["guided"]["outside_region_mean_abs_change"], c["mean_difference_matched"]["outside_region_mean_abs_change"],
             c["guided"]["psnr_to_reconstruction_db"]]
            for c in data["changes"]]
    # A change the judge already sees on most reconstructions (the VAE lost the attribute) proves nothing.
    lost = [f"{c['change']} ({c['reconstruction']['judge_success']}/{len(c['subjects'])})" for c in data["changes"]
            if c["reconstruction"]["judge_success"] > len(c["subjects"]) / 2]
    note = [Text("The judge already sees the target on most reconstructions before any edit for: " + ", ".join(lost)
                 + "; its success rate there says little.", note=True)] if lost else []
    return note + [
        Text("Judge = a classifier trained independently of the guide that steers the latent (other architecture "
             "and seed); the mean-difference baselines move along the attribute's mean latent difference, "
             "'matched' to the guided edit's latent distance."),
        matrix_table(data["summary"], "method (mean over changes)"),
        Table(["change", "guide reached target", "judge success on the reconstruction (before)",
               "judge success: guided", "mean diff. matched", "mean diff. full", "other attributes |Δp|: guided",
               "matched", "grey levels outside the attribute's area: guided", "matched", "guided PSNR dB"], rows)]


def identity_blocks(data: dict) -> list:
    subspace = data["subspace"]
    blocks = [Text(f"Identity subspace: {subspace['dims']} of {subspace['of']} latent dimensions, keeping "
                   f"{subspace['within_variance_share_kept']:.0%} of the within-identity variance "
                   f"({subspace['identities_used']} identities, {subspace['images_used']:,} images).")]
    for anchor in data["anchors"]:
        blocks += [Heading(f"anchor identity {anchor['identity']} ({anchor['images']} images)"),
                   matrix_table(anchor["metrics"], "image set")]
    return blocks


EDIT_BLOCKS = {"amplify": amplify_blocks, "guide": guide_blocks, "identity": identity_blocks}


def edit_section(name: str, folder: Path) -> Section:
    section = Section(f"Editing: {name}")
    data = read_json(folder / f"{name}.json")
    if data is None:
        section.blocks.append(Text(f"No {name}.json in {folder}."))
        return section
    section.blocks += [*EDIT_BLOCKS[name](data), fields(data),
                       Figures([Figure(p, p.stem.replace("_", " ")) for p in sorted(folder.glob("*.png"))])]
    return section


# -------------------------------------------------------------------------------------------------- benchmarks

def bench_section(benches: list[tuple[Path, dict]]) -> Section:
    section = Section("Benchmarks")
    for path, data in benches:
        rows = data.get("rows", [])
        columns = [c for c in dict.fromkeys(k for row in rows for k in row)
                   if all(not isinstance(row.get(c), (dict, list)) for row in rows)]
        section.blocks += [Heading(path.stem), records_table(rows, columns), fields(data)]
    return section
