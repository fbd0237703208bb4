"""Editing: classifiers, the three edit commands, the guided-edit acceptance numbers, and bad input.

One module-scoped set-up trains everything small on a synthetic CelebA whose attributes are drawn truthfully
(glasses are really drawn when Eyeglasses is 1): a small VAE, a `cnn` guide and a `resnet` judge of different
seeds. The acceptance test then checks that guided "add Eyeglasses" convinces the *judge* on at least 6 of 8
subjects while the judge's other 39 probabilities move little.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edit.classifier import main as classifier_main
from model.classifier import ClassifierError, load_classifier
from edit.cli import main as edit_main
from edit.common import EditError, attribute_index, parse_changes
from shard_builder.synthetic import ATTRIBUTE_NAMES
from train.run import main as train_main

NAMES = list(ATTRIBUTE_NAMES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Synthetic shards (1,600 images), a small VAE (the CPU recipe's network) and two independent classifiers,
    trained once."""
    from shard_builder.build import BuildOptions, build
    from shard_builder.synthetic import generate

    base = tmp_path_factory.mktemp("edit")
    generate(base / "celeba", num_images=1600, seed=7, images_per_identity=20, workers=2)
    shards = base / "shards"
    build(base / "celeba", shards, BuildOptions(samples_per_shard=800, workers=2))
    vae = base / "vae"
    assert train_main(["--shards", str(shards), "--out", str(vae), "--preset", "cpu", "--batch-size", "32",
                       "--epochs", "6", "--lr", "3e-3", "--warmup-images", "640", "--kl-anneal-images", "3200",
                       "--likelihood", "gaussian_fixed", "--log-every", "50", "--compile", "off",
                       "--precision", "fp32", "--no-figures"]) == 0
    guide, judge = base / "guide", base / "judge"
    assert classifier_main(["--shards", str(shards), "--out", str(guide), "--arch", "cnn", "--width", "16",
                            "--epochs", "6", "--seed", "0", "--cpu"]) == 0
    assert classifier_main(["--shards", str(shards), "--out", str(judge), "--arch", "resnet", "--width", "12",
                            "--epochs", "6", "--seed", "1", "--cpu"]) == 0
    return {"base": base, "shards": shards, "vae": vae, "guide": guide, "judge": judge}


def _edit(trained: dict, command: str, out: Path, *flags: str, guide: bool = True) -> int:
    args = [command, "--vae", str(trained["vae"]), "--judge", str(trained["judge"]), "--shards", str(trained["shards"]),
            "--out", str(out), "--cpu"]
    if guide:
        args += ["--guide", str(trained["guide"])]
    return edit_main(args + list(flags))


def test_attribute_names_and_changes_parse_with_close_matches():
    assert attribute_index("eyeglasses", NAMES) == NAMES.index("Eyeglasses")
    changes = parse_changes("add:Eyeglasses, remove:smiling,+Bangs,-Blond_Hair", NAMES)
    assert [(c.attribute, c.target) for c in changes] == [("Eyeglasses", 1), ("Smiling", 0), ("Bangs", 1),
                                                          ("Blond_Hair", 0)]
    with pytest.raises(EditError, match=r"unknown attribute 'Eyeglases'; close matches: Eyeglasses"):
        parse_changes("add:Eyeglases", NAMES)
    with pytest.raises(EditError, match="neither add nor remove"):
        parse_changes("grow:Bangs", NAMES)


def test_classifiers_report_per_attribute_test_accuracy(trained):
    for role in ("guide", "judge"):
        report = json.loads((trained[role] / "test_accuracy.json").read_text())
        assert list(report["accuracy"]) == NAMES
        # Rendered per-photo attributes are learnable; a classifier that had learnt nothing would sit at the
        # majority rate. (Per-person attributes such as hair colour may not vary in a test split of 8 people.)
        for name in ("Eyeglasses", "Smiling"):
            assert report["accuracy"][name] > report["majority_accuracy"][name] + 0.02, (role, name, report)
    guide, guide_meta = load_classifier(trained["guide"])
    judge, judge_meta = load_classifier(trained["judge"])
    assert (guide.cfg.arch, guide_meta["seed"]) != (judge.cfg.arch, judge_meta["seed"])


def test_guided_edit_adds_eyeglasses_that_the_judge_sees(trained, tmp_path):
    out = tmp_path / "guide"
    assert _edit(trained, "guide", out, "--changes", "add:Eyeglasses", "--steps", "150") == 0
    report = json.loads((out / "guide.json").read_text())
    change = report["changes"][0]
    guided, baseline = change["guided"], change["mean_difference_matched"]
    assert change["reconstruction"]["judge_success"] <= 2  # the subjects do not wear glasses to begin with
    assert guided["judge_success"] >= 6, change
    assert guided["other_attributes_mean_abs_change"] < 0.1, change
    assert guided["psnr_to_reconstruction_db"] > 15, change
    assert baseline["judge_success"] >= 0 and "mean_difference_full" in change
    # Glasses live around the eyes: the edit changes the pixels there more than the rest of the face.
    assert 0 < change["attribute_region_share"] < 0.5, change
    assert guided["inside_region_mean_abs_change"] > guided["outside_region_mean_abs_change"], change
    # The trade-off: the same step lengths for both methods, and a longer step changes more outside the region.
    curves = report["trade_off"]["per_change"]
    for method in ("guided", "mean_difference"):
        points = curves[method]["add Eyeglasses"]
        assert [p["scale"] for p in points] == report["trade_off"]["scales"]
        assert points[-1]["outside_region_mean_abs_change"] > points[0]["outside_region_mean_abs_change"]
    for g, b in zip(curves["guided"]["add Eyeglasses"], curves["mean_difference"]["add Eyeglasses"]):
        assert abs(g["latent_distance"] - b["latent_distance"]) < 1e-4 * max(1.0, g["latent_distance"])
    for name in ("guide_add_Eyeglasses.png", "guide_overview.png", "guide_comparison.png", "guide_tradeoff.png"):
        assert (out / name).stat().st_size > 2000, name


def test_amplify_and_identity_write_grids_and_measurements(trained, tmp_path):
    out = tmp_path / "edits"
    assert _edit(trained, "amplify", out, "--candidates", "12", "--probe", "6", guide=False) == 0
    amplify = json.loads((out / "amplify.json").read_text())
    assert len(amplify["components"]) == 4
    assert len({c["moves"][0]["attribute"] for c in amplify["components"]}) == 4  # four different effects
    for component in amplify["components"]:
        assert len(component["alphas"]) == 10 and (out / component["figure"]).stat().st_size > 2000
        assert component["alphas"][0] < 0 < component["alphas"][-1]
        assert 0 <= component["judge_named_subjects"] <= 8 and 0 < component["region_area_share"] <= 1
        ends = component["ends_vs_reconstruction"]
        for end in ("low", "high"):  # the region is where the face changes, so it changes more there
            assert ends[end]["region_mean_abs_change"] >= ends[end]["mean_abs_change"], component
    usage = amplify["latent_usage"]["kl_per_component"]
    assert 1 <= usage["directions_for_half"] <= usage["directions_for_90_percent"]
    assert usage["largest_shares"] == sorted(usage["largest_shares"], reverse=True) and usage["effective_number"] >= 1
    assert (out / "amplify_curves.png").is_file()

    assert _edit(trained, "identity", out, guide=False) == 0
    identity = json.loads((out / "identity.json").read_text())
    assert len(identity["anchors"]) == 3 and identity["subspace"]["dims"] >= 1
    for anchor in identity["anchors"]:
        m = anchor["metrics"]
        assert (out / anchor["figure"]).stat().st_size > 2000
        assert m["subject_reconstruction"]["outside_face_psnr_to_subject_db"] > 90  # unchanged: 99 dB cap
        # Pose and setting: the transfer changes less outside the face than decoding the anchor's mean does.
        assert m["transfer_t1"]["outside_face_mean_abs_change"] < m["anchor_mean"]["outside_face_mean_abs_change"]
        # Moving the identity part toward the anchor brings the judge's view of the face closer to the anchor...
        assert m["transfer_t1"]["judge_attribute_distance_to_anchor"] < m["subject_reconstruction"][
            "judge_attribute_distance_to_anchor"]
        # ...and keeps the layout closer to the subject than plainly decoding the anchor's mean does.
        assert m["transfer_t1"]["low_frequency_correlation_to_subject"] > m["anchor_mean"][
            "low_frequency_correlation_to_subject"]
    assert (out / "identity_overview.png").is_file()


def test_bad_input_exits_1_naming_the_value_or_file(trained, tmp_path, capsys):
    out = tmp_path / "bad"
    assert _edit(trained, "guide", out, "--changes", "add:Eyeglases") == 1
    assert "close matches: Eyeglasses" in capsys.readouterr().err

    assert _edit(trained, "identity", out, "--min-anchor-images", "25", guide=False) == 1
    assert "need 3 anchors" in capsys.readouterr().err
    from shard_builder.read import open_split

    some_identity = int(open_split(trained["shards"] / "test").identities[0])
    assert _edit(trained, "identity", out, "--anchors", f"{some_identity},1,2", "--min-anchor-images", "25",
                 guide=False) == 1
    assert f"identity {some_identity} has only 20 image(s)" in capsys.readouterr().err
    assert _edit(trained, "identity", out, "--anchors", "999999,1,2", guide=False) == 1
    assert "identity 999999 has no images" in capsys.readouterr().err

    # A classifier trained on another attribute set, or for another image size, does not fit.
    other = tmp_path / "other-judge"
    shutil.copytree(trained["judge"], other)
    meta = json.loads((other / "classifier.json").read_text())
    meta["config"]["attribute_names"][15] = "Sunglasses"
    (other / "classifier.json").write_text(json.dumps(meta))
    assert _edit(dict(trained, judge=other), "amplify", out, guide=False) == 1
    err = capsys.readouterr().err
    assert "classifier.json" in err and "another attribute set" in err and "Sunglasses" in err
    meta["config"]["attribute_names"][15] = "Eyeglasses"
    meta["config"]["image_size"] = 32
    (other / "classifier.json").write_text(json.dumps(meta))
    assert _edit(dict(trained, judge=other), "amplify", out, guide=False) == 1
    assert "takes 32x32 images" in capsys.readouterr().err

    # Weights that do not match the config, a missing classifier, and the guide used as its own judge.
    meta["config"]["image_size"], meta["config"]["width"] = 64, 16
    (other / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ClassifierError, match=r"classifier.safetensors: weights do not match"):
        load_classifier(other)
    assert _edit(dict(trained, judge=tmp_path / "nowhere"), "amplify", out, guide=False) == 1
    assert "nowhere: no classifier.safetensors" in capsys.readouterr().err
    assert _edit(dict(trained, judge=trained["guide"]), "guide", out) == 1
    assert "the same classifier" in capsys.readouterr().err
    # A split folder instead of the shards root.
    assert _edit(dict(trained, shards=trained["shards"] / "test"), "amplify", out, guide=False) == 1
    assert "pass the shards root" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [("--model", "ae"), ("--model", "aae"), ("--likelihood", "categorical"),
                                   ("--likelihood", "bernoulli"), ("--likelihood", "logistic_mixture")])
def test_other_models_and_decoders_load_in_every_edit(trained, tmp_path, flags):
    """Point-latent models (autoencoder, AAE) and the discrete decoders edit like the Gaussian VAE: codes are mu, and
    every decoder gives a mean image to show and judge."""
    # Two steps and a 1x1 output convolution (the categorical's 768 channels at 3x3 cost most of a minute of
    # decoding here): the edits need a checkpoint of the kind, not a good one.
    run = tmp_path / "run"
    assert train_main(["--shards", str(trained["shards"]), "--out", str(run), *flags, "--preset", "tiny",
                       "--head-kernel-size", "1", "--batch-size", "32", "--epochs", "1", "--max-steps", "2",
                       "--compile", "off", "--precision", "fp32", "--no-figures"]) == 0
    edited = {**trained, "vae": run}
    out = tmp_path / "edits"
    few = ("--subjects", "2")  # every decode of the categorical's 768 channels takes a 256-way softmax per sub-pixel
    assert _edit(edited, "guide", out, *few, "--changes", "add:Eyeglasses", "--steps", "5") == 0
    assert json.loads((out / "guide.json").read_text())["changes"][0]["guided"]["judge_success"] >= 0
    assert _edit(edited, "amplify", out, *few, "--count", "2", "--num-alphas", "3", "--candidates", "8", "--probe",
                 "4", guide=False) == 0
    assert _edit(edited, "identity", out, *few, guide=False) == 0
    assert {"guide.json", "amplify.json", "identity.json"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("along, first_stop, last_stop", [("none", 6, 8), ("mean_difference", 2, 2)])
def test_guided_step_along_the_mean_difference_grows_as_fast_as_all_of_u(along, first_stop, last_stop):
    """A guide whose logit is 10 (x . e) and a decoder that is the identity, no other loss terms: Adam moves each
    parameter at most lr = 0.05 per step (about that while the gradient keeps its sign), so u alone needs at least
    6 steps to reach the guide's 0.95 (x . e >= 0.294); the free length along e moves sqrt(d) = 4 times as far
    per step, so with it the target is reached after 2. Either way the edit stays on e."""
    from types import SimpleNamespace

    import torch

    from edit.guide import GuideSettings, guided_latents

    n, d = 3, 16
    e = torch.zeros(d)
    e[5] = 1.0
    ctx = SimpleNamespace(decode=lambda z: z.view(len(z), 1, 1, d),
                          guide=lambda x: torch.stack([10 * x.flatten(1) @ e, torch.zeros(len(x))], 1))
    mu = torch.zeros(n, d)
    settings = GuideSettings(steps=50, lr=0.05, target_prob=0.95, w_other=0.0, w_image=0.0, w_latent=0.0,
                             views="none", along=along)
    directions = e.expand(n, d) if along == "mean_difference" else None
    with torch.enable_grad():
        z, prob, stopped = guided_latents(ctx, mu, ctx.decode(mu), torch.zeros(n, dtype=torch.long), torch.ones(n),
                                          settings, directions=directions)
    assert first_stop <= stopped[0] <= last_stop and len(set(stopped)) == 1 and (prob >= 0.95).all()
    torch.testing.assert_close(z, (z @ e)[:, None] * e)


def test_orthogonal_projectors_take_out_the_other_attributes_directions():
    """Target 0 with others [1, 0, 1, 0, ...] and [0, 0, 0, 2, 0, ...]: P removes both, keeps what is orthogonal
    to them ([1, -1, -1, 0, ...], the last axis), and is a projection (symmetric, idempotent, trace 6 - 2). Two
    parallel others span one direction only: P = I - v v^T, not zero."""
    import torch

    from edit.guide import orthogonal_projectors

    directions = {0: torch.tensor([1., 1, 0, 0, 0, 0]), 3: torch.tensor([1., 0, 1, 0, 0, 0]),
                  7: torch.tensor([0., 0, 0, 2, 0, 0])}
    (projector,) = orthogonal_projectors(directions, torch.tensor([0]))
    for other in (directions[3], directions[7]):
        torch.testing.assert_close(projector @ other, torch.zeros(6))
    for kept in (torch.tensor([1., -1, -1, 0, 0, 0]), torch.eye(6)[5]):
        torch.testing.assert_close(projector @ kept, kept)
    torch.testing.assert_close(projector, projector.T)
    torch.testing.assert_close(projector @ projector, projector)
    assert abs(float(projector.trace()) - 4) < 1e-5
    parallel = {0: torch.tensor([1., 0]), 1: torch.tensor([1., 1]), 2: torch.tensor([2., 2])}
    torch.testing.assert_close(orthogonal_projectors(parallel, torch.tensor([0]))[0],
                               torch.tensor([[0.5, -0.5], [-0.5, 0.5]]))


def test_a_projected_correction_leaves_the_protected_direction_alone():
    """A guide whose logit is 10 x . (e + f), an identity decoder, u alone: the free edit moves along e and f
    equally; with P taking out f it moves along e only."""
    from types import SimpleNamespace

    import torch

    from edit.guide import GuideSettings, guided_latents, orthogonal_projectors

    n, d = 2, 8
    e, f = torch.eye(d)[2], torch.eye(d)[6]
    ctx = SimpleNamespace(decode=lambda z: z.view(len(z), 1, 1, d),
                          guide=lambda x: torch.stack([10 * x.flatten(1) @ (e + f), torch.zeros(len(x))], 1))
    mu = torch.zeros(n, d)
    settings = GuideSettings(steps=50, lr=0.05, w_other=0.0, w_image=0.0, w_latent=0.0, views="none", along="none")
    targets = torch.zeros(n, dtype=torch.long)
    projectors = orthogonal_projectors({0: e, 1: f}, targets)
    with torch.enable_grad():
        free, _, _ = guided_latents(ctx, mu, mu.view(n, 1, 1, d), targets, torch.ones(n), settings)
        kept, prob, _ = guided_latents(ctx, mu, mu.view(n, 1, 1, d), targets, torch.ones(n), settings,
                                       projectors=projectors)
    torch.testing.assert_close(free @ e, free @ f)
    assert (kept @ e > 0).all() and (prob >= 0.95).all()
    torch.testing.assert_close(kept @ f, torch.zeros(n))


def test_change_region_is_where_the_pixels_change():
    import torch

    from edit.common import change_region, grey_change, region_changes

    before = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    after = before.clone()
    after[:, :, 2:4, 5:8] = 40  # a 2x3 block changes by 40 grey levels in every channel
    after[:, 0, 0, 0] = 6  # one stray pixel changes by 2 on average over the channels
    change = grey_change(before, after)
    region = change_region(change.mean(0))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:4, 5:8] = True
    assert torch.equal(region, expected)
    measured = region_changes(before, after, region)
    assert measured["inside_region_mean_abs_change"] == 40.0
    assert abs(measured["outside_region_mean_abs_change"] - 2 / 58) < 1e-6


def test_sweep_ends_are_the_train_quantiles_and_kl_shares_count_components():
    import torch

    from edit.amplify import data_directions, share_curve

    # Component 0 takes the values 0..100 (std ~29), component 1 is ten times narrower: the axis basis orders them
    # by spread and the sweep's ends are the 1st and 99th percentiles less the mean (1 - 50 and 99 - 50).
    values = torch.arange(101, dtype=torch.float32)
    mu = torch.stack([values, values.flip(0) / 10], 1)
    directions = data_directions(mu, "axis", 0.01)
    assert directions.index.tolist() == [0, 1]
    torch.testing.assert_close(directions.alpha_low, torch.tensor([-49.0, -4.9]))
    torch.testing.assert_close(directions.alpha_high, torch.tensor([49.0, 4.9]))
    full = data_directions(mu, "axis", 0.0)
    torch.testing.assert_close(full.alpha_high, torch.tensor([50.0, 5.0]))

    shares = share_curve(torch.tensor([2.0, 8.0, 2.0, 4.0]))  # shares 1/2, 1/4, 1/8, 1/8 once sorted
    assert (shares["directions_for_half"], shares["directions_for_90_percent"]) == (1, 4)
    assert shares["largest_shares"] == [0.5, 0.25, 0.125, 0.125]
    assert abs(share_curve(torch.ones(5))["effective_number"] - 5) < 1e-5

