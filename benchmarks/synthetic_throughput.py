"""Synthetic data throughput: samples/s to build (draw + PNG + JSONL), and to load + prepare (decode + resize).

    OMP_NUM_THREADS=1 python benchmarks/synthetic_throughput.py --n 2000 --image-size 112
"""

from __future__ import annotations

import argparse
import tempfile
import time

from data_pipelines.synthetic import TASKS, build_synthetic
from mmrl.config.data import DataConfig
from mmrl.data.dataset import load_samples
from mmrl.data.vision import prepare_sample_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        path = build_synthetic(tasks, args.n, seed=0, out_dir=out, difficulty=[1, 2, 3], image_size=args.image_size)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        samples = load_samples(str(path))
        cfg = DataConfig(min_pixels=28 * 28, max_pixels=448 * 448)
        for sample in samples:
            prepare_sample_images(sample, cfg)
        load_s = time.perf_counter() - start
    print(f"tasks={','.join(tasks)} n={args.n} image_size={args.image_size}")
    print(f"build: {args.n / build_s:,.0f} samples/s ({build_s:.2f} s)")
    print(f"load+prepare: {args.n / load_s:,.0f} samples/s ({load_s:.2f} s)")


if __name__ == "__main__":
    main()
