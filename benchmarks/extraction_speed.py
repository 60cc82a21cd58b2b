"""Extraction time vs a plain full forward pass over the same texts, measured in one run.

The plain pass is what a naive extractor costs: every text through the whole model with the
LM head, in the given order, at the same batch size. emovec skips the LM head and sorts by
length. Also reports the load time of the embedded model (first conversion and cached), and
the peak memory of extraction over 100 vs 1,000 pairs, each in a fresh process (peak resident
set size above the process's size right after loading the model).

    python benchmarks/extraction_speed.py [--batch-size 32] [--skip-load] [--skip-memory]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice

import torch

from emovec import extract, load_model
from emovec.datasets import available_emotions, default_pairs


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _memory_child(count: int, batch_size: int) -> None:
    """Extract ``count`` pairs (the shipped ones, cycled into sets of 100 so no set repeats
    a pair) and print the peak RSS growth over the loaded model."""
    model, tokenizer = load_model()
    shipped = [pair for items in default_pairs(available_emotions()).values() for pair in items]
    chosen = list(islice(cycle(shipped), count))
    pairs = {f"set{i // 100}": [] for i in range(count)}
    for i, pair in enumerate(chosen):
        pairs[f"set{i // 100}"].append(pair)
    baseline = _peak_rss_mb()
    extract(model, tokenizer, pairs, batch_size=batch_size, progress=False)
    print(f"{_peak_rss_mb() - baseline:.1f}")


def _memory(count: int, batch_size: int) -> float:
    output = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(count), "--batch-size", str(batch_size)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--skip-load", action="store_true", help="do not time a fresh load")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure memory")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.batch_size)
        return

    if not args.skip_load:
        with tempfile.TemporaryDirectory() as cache:
            previous = os.environ.get("EMOVEC_CACHE")
            os.environ["EMOVEC_CACHE"] = cache
            started = time.perf_counter()
            load_model()
            first = time.perf_counter() - started
            started = time.perf_counter()
            load_model()
            cached = time.perf_counter() - started
            if previous is None:
                del os.environ["EMOVEC_CACHE"]
            else:
                os.environ["EMOVEC_CACHE"] = previous
        print(f"load: first (GGUF conversion) {first:.1f} s, cached {cached:.1f} s")

    model, tokenizer = load_model()
    pairs = default_pairs()
    texts = [t for items in pairs.values() for pair in items for t in pair]
    started = time.perf_counter()
    extract(model, tokenizer, pairs, batch_size=args.batch_size, progress=False)
    extraction = time.perf_counter() - started

    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), args.batch_size):
            batch = tokenizer(texts[i : i + args.batch_size], return_tensors="pt", padding=True)
            model(**batch, use_cache=False)
    forward = time.perf_counter() - started
    print(
        f"{len(texts)} texts ({sum(map(len, pairs.values()))} pairs), batch {args.batch_size}: "
        f"extraction {extraction:.1f} s, plain forward {forward:.1f} s, "
        f"ratio {extraction / forward:.2f}"
    )
    if not args.skip_memory:
        few, many = (_memory(n, args.batch_size) for n in (100, 1000))
        print(
            f"peak memory above the loaded model: 100 pairs {few:.0f} MB, "
            f"1,000 pairs {many:.0f} MB (ratio {many / max(few, 1.0):.2f})"
        )


if __name__ == "__main__":
    main()
