"""`python -m shard_builder.bench`: raw vs JPEG shards side by side in one run -> table + JSON.

Per encoding: build speed (all workers), bytes per image, single-core decode speed of the members
(numpy view for raw, PIL for JPEG), DALI CPU-pipeline decode speed, and JPEG fidelity (PSNR to the exact
pixels). Also the single-core preprocessing speed (JPEG decode + crop + box resize) of the installed PIL,
so PIL and pillow-simd can be compared by running this under each.

Image sources: the root's images copied once into a folder and once into a zip deflated like CelebA's own
(same files, the root's own layout otherwise), then read on one core and built (raw, all workers), each from
the page cache and from the disk (the image files evicted from the page cache first), folder and zip
alternating, best of `--source-repeats`; all the builds must agree byte for byte.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from rich.console import Console
from rich.table import Table

from shard_builder import format as fmt
from shard_builder.annotations import read_annotations
from shard_builder.build import BuildOptions, build, preprocess
from shard_builder.layouts import LAYOUTS, ImageSource, Layout, find_layout, write_image_zip


def _members(shard: Path) -> list[bytes]:
    with tarfile.open(shard) as tar:
        return [tar.extractfile(member).read() for member in tar]


def _rate(count: int, function) -> float:
    started = time.perf_counter()
    function()
    return count / (time.perf_counter() - started)


def _decode_all(members: list[bytes], encoding: str) -> list[np.ndarray]:
    if encoding == "raw":
        return [fmt.unpack_raw(data).copy() for data in members]
    return [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in members]


def _dali_rate(split_dir: Path, encoding: str, count: int) -> float | None:
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        return None
    shards = sorted(split_dir.glob("*.tar"))

    @pipeline_def(batch_size=256, num_threads=1, device_id=None, prefetch_queue_depth=2)
    def pipeline():
        data = fn.readers.webdataset(paths=[str(s) for s in shards], index_paths=[str(s.with_suffix(".idx")) for s in shards],
                                     ext=[encoding], name="reader", pad_last_batch=True)
        if encoding == "raw":
            return fn.reshape(data[fmt.LABEL_BYTES:], shape=[64, 64, 3])
        return fn.decoders.image(data, device="cpu", output_type=types.RGB)

    pipe = pipeline()
    pipe.build()
    batches = -(-count // 256)
    pipe.run()  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        pipe.run()
    return batches * 256 / (time.perf_counter() - started)


def _folder_and_zip_roots(layout: Layout, names: list[str], tmp: Path) -> dict[str, Path]:
    """The images `names` of `layout` in a folder and in a zip, each beside a copy of the annotation files."""
    spec = LAYOUTS[layout.name]
    roots = {"folder": tmp / "folder", "zip": tmp / "zip"}
    for root in roots.values():
        for path in (layout.attributes, layout.partitions, layout.identities):
            if path is not None:
                (root / path.relative_to(layout.root)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, root / path.relative_to(layout.root))
    folder = roots["folder"] / spec.image_folder
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(layout.images.read(name))
    write_image_zip(folder, roots["zip"] / spec.image_zip)
    return roots


def _read_all(images: ImageSource, names: list[str]) -> None:
    for name in names:
        images.read(name)


def _evict(paths: list[Path]) -> None:
    """Drop files from the page cache (written back first), so that the next read comes from the disk."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _shard_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.suffix in (".tar", ".idx", ".parquet")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


SOURCE_RATES = ("read_warm_1core", "read_from_disk_1core", "build_warm", "build_from_disk")  # img/s


def compare_sources(layout: Layout, names: list[str], tmp: Path, repeats: int) -> dict:
    """Reading the images `names` of `layout` from a folder and from a zip: 1-core read rates and build rates, each
    from the page cache (warm) and from the disk; best of `repeats`, the two sources alternating."""
    roots = _folder_and_zip_roots(layout, names, tmp)
    order = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    sources = {kind: find_layout(root).images for kind, root in roots.items()}
    files = {kind: [images.path] if images.is_zip else [images.path / name for name in order]
             for kind, images in sources.items()}
    runs = {kind: {key: [] for key in SOURCE_RATES} for kind in roots}
    digests = set()
    for _ in range(repeats):
        for kind, images in sources.items():
            _read_all(images, order)  # warm-up
            runs[kind]["read_warm_1core"].append(_rate(len(order), lambda: _read_all(images, order)))
            _evict(files[kind])
            runs[kind]["read_from_disk_1core"].append(_rate(len(order), lambda: _read_all(images, order)))
            for cache in ("warm", "from_disk"):
                if cache == "from_disk":
                    _evict(files[kind])
                summary = build(roots[kind], tmp / "build", BuildOptions())
                runs[kind][f"build_{cache}"].append(sum(summary.dataset["counts"].values()) / summary.seconds)
                digests.add(_shard_digest(tmp / "build"))
                shutil.rmtree(tmp / "build")
    rows = {kind: {"bytes": sum(path.stat().st_size for path in files[kind]),
                   **{key: max(rates) for key, rates in runs[kind].items()},
                   "runs": runs[kind]} for kind in roots}
    return {"images": len(order), "workers": BuildOptions().workers, "repeats": repeats, "sources": rows,
            "identical_shards": len(digests) == 1}


def _print_sources(console: Console, sources: dict) -> None:
    table = Table(title=f"the same {sources['images']:,} images from a folder and from a zip (deflated), img/s, "
                        f"best of {sources['repeats']}")
    for column in ("source", "MB", "read, page cache (1 core)", "read, from disk (1 core)",
                   f"build, page cache ({sources['workers']} workers)", "build, from disk"):
        table.add_column(column, justify="right")
    rows = sources["sources"]
    for kind, row in rows.items():
        table.add_row(kind, f"{row['bytes'] / 1e6:,.1f}", *(f"{row[key]:,.0f}" for key in SOURCE_RATES))
    table.add_row("zip / folder", "", *(f"{rows['zip'][key] / rows['folder'][key]:.2f}x" for key in SOURCE_RATES))
    console.print(table)
    console.print(f"shards built from the folder and from the zip identical: {sources['identical_shards']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shard_builder.bench", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="CelebA root (e.g. the real sample)")
    parser.add_argument("--json", type=Path, default=Path("bench_results/shards.json"))
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--preprocess-images", type=int, default=2000)
    parser.add_argument("--source-repeats", type=int, default=3, help="folder-vs-zip runs (best is reported)")
    args = parser.parse_args(argv)
    console = Console()
    layout = find_layout(args.root)
    annotations = read_annotations(layout.attributes, layout.partitions, layout.identities)
    names = annotations.files[: args.preprocess_images]
    crop = fmt.CROPS["center"]
    preprocess_rate = _rate(len(names), lambda: [preprocess(layout.images, n, crop) for n in names])
    results = {"machine": platform.node(), "pil": f"{PIL.__name__} {PIL.__version__}",
               "preprocess_img_per_s_1core": preprocess_rate, "encodings": {}}
    exact = None
    with tempfile.TemporaryDirectory() as tmp:
        for encoding in fmt.ENCODINGS:
            out = Path(tmp) / encoding
            summary = build(args.root, out, BuildOptions(encoding=encoding, jpeg_quality=args.jpeg_quality))
            total = sum(summary.dataset["counts"].values())
            members = _members(out / "test" / "test-000000.tar")
            decoded = _decode_all(members, encoding)
            row = {
                "build_img_per_s": total / summary.seconds,
                "bytes_per_image": sum(summary.bytes_per_split.values()) / total,
                "decode_img_per_s_1core": _rate(len(members), lambda: _decode_all(members, encoding)),
                "dali_cpu_img_per_s_1thread": _dali_rate(out / "train", encoding, summary.dataset["counts"]["train"]),
            }
            if encoding == "raw":
                exact = np.stack(decoded).astype(np.float64)
            else:
                mse = np.mean((np.stack(decoded).astype(np.float64) - exact) ** 2)
                row["psnr_db"] = float(10 * np.log10(255**2 / mse))
                row["jpeg_quality"] = args.jpeg_quality
            results["encodings"][encoding] = row
    table = Table(title=f"shard encodings on {args.root} ({results['pil']})")
    for column in ("encoding", "build img/s", "bytes/img", "decode img/s (1 core)", "DALI CPU img/s (1 thr)", "PSNR dB"):
        table.add_column(column, justify="right")
    for encoding, row in results["encodings"].items():
        dali = row["dali_cpu_img_per_s_1thread"]
        table.add_row(encoding, f"{row['build_img_per_s']:,.0f}", f"{row['bytes_per_image']:,.0f}",
                      f"{row['decode_img_per_s_1core']:,.0f}", "n/a" if dali is None else f"{dali:,.0f}",
                      f"{row['psnr_db']:.1f}" if "psnr_db" in row else "exact")
    console.print(table)
    console.print(f"preprocess (decode 178x218 JPEG + crop + box resize), 1 core: {preprocess_rate:,.0f} img/s")
    with tempfile.TemporaryDirectory() as tmp:
        sources = results["image_sources"] = compare_sources(layout, annotations.files, Path(tmp), args.source_repeats)
    _print_sources(console, sources)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
