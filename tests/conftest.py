"""Shared test data: a small synthetic CelebA (always), the real sample (when ../shared is beside the repo)."""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = Path(os.environ.get("CELEBA_SAMPLE", REPO.parent / "shared" / "celeba-sample" / "celeba"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests' tensors are small: on a loaded 2-core runner two OpenMP threads only spin and thrash
    (measured up to 100x slower), so every test runs torch single-threaded."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 240-image synthetic CelebA (12 identities of 20 images), made once per test session."""
    from shard_builder.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "celeba"
    generate(root, num_images=240, seed=0, images_per_identity=20)
    return root


@pytest.fixture(scope="session")
def sample_root() -> Path:
    if not (SAMPLE_ROOT / "img_align_celeba").is_dir():
        pytest.skip(f"real CelebA sample not present at {SAMPLE_ROOT}")
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def synthetic_shards(synthetic_root, tmp_path_factory) -> Path:
    """Raw shards of the synthetic set, 16 samples per shard so every split has several shards."""
    from shard_builder.build import BuildOptions, build

    out = tmp_path_factory.mktemp("shards") / "raw"
    build(synthetic_root, out, BuildOptions(samples_per_shard=16, workers=2))
    return out


@pytest.fixture(scope="session")
def synthetic_jpg_shards(synthetic_root, tmp_path_factory) -> Path:
    """JPEG shards of the synthetic set, same samples and shard layout as `synthetic_shards`."""
    from shard_builder.build import BuildOptions, build

    out = tmp_path_factory.mktemp("shards") / "jpg"
    build(synthetic_root, out, BuildOptions(encoding="jpg", samples_per_shard=16, workers=2))
    return out


@pytest.fixture(scope="session")
def sample_shards(sample_root, tmp_path_factory) -> Path:
    from shard_builder.build import BuildOptions, build

    out = tmp_path_factory.mktemp("sample-shards") / "raw"
    build(sample_root, out, BuildOptions(workers=2))
    return out


@pytest.fixture
def celeba_copy(synthetic_root, tmp_path) -> Path:
    """A private, writable copy of the synthetic set that a test may damage."""
    root = tmp_path / "celeba"
    shutil.copytree(synthetic_root, root)
    return root


@pytest.fixture(scope="session")
def tiny_run(synthetic_shards, tmp_path_factory) -> Path:
    """A 2-epoch tiny-VAE run on the synthetic shards, with its figures and checkpoint."""
    from train.run import main as train_main

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    assert train_main(["--shards", str(synthetic_shards), "--out", str(run), "--preset", "tiny", "--epochs", "2",
                       "--batch-size", "16", "--compile", "off", "--precision", "fp32", "--log-every", "2"]) == 0
    return run


# Fixtures that train models or run the whole demo (seconds to minutes each): every test using one is in the slow
# tier, as are the tests marked so (training, compiling, several processes); `pytest -m "not slow"` leaves them
# out for a quick edit-test loop.
TRAINING_FIXTURES = ("trained", "demo_work", "checkpoints", "tiny_run")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(name in item.fixturenames for name in TRAINING_FIXTURES):
            item.add_marker(pytest.mark.slow)
    # The files with the most slow tests first (pytest-xdist hands out whole files in this order): the workers
    # start on the long files and fill the end with short ones, instead of one worker finishing a long file alone.
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])
