"""`python -m shard_builder.bench`: raw vs JPEG shards side by side in one run -> table + JSON.

Per encoding: build speed (all workers), bytes per image, single-core decode speed of the members
(numpy view for raw, PIL for JPEG), DALI CPU-pipeline decode speed, and JPEG fidelity (PSNR to the exact
pixels). Also the single-core preprocessing speed (JPEG decode + crop + box resize) of the installed PIL,
so PIL and pillow-simd can be compared by running this under each.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
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
from shard_builder.layouts import find_layout


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shard_builder.bench", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="CelebA root (e.g. the real sample)")
    parser.add_argument("--json", type=Path, default=Path("bench_results/shards.json"))
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--preprocess-images", type=int, default=2000)
    args = parser.parse_args(argv)
    console = Console()
    annotations = read_annotations(find_layout(args.root))
    names = annotations.files[: args.preprocess_images]
    crop = fmt.CROPS["center"]
    preprocess_rate = _rate(len(names), lambda: [preprocess(annotations.layout.images, n, crop) for n in names])
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
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
