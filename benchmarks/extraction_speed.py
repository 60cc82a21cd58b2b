"""Extraction time vs a plain full forward pass over the same texts, measured in one run.

The plain pass is what a naive extractor costs: every text through the whole model with the
LM head, in the given order, at the same batch size. emovec skips the LM head and sorts by
length. Also reports the load time of the embedded model (first conversion and cached).

    python benchmarks/extraction_speed.py [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from emovec import extract, load_model
from emovec.datasets import default_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--skip-load", action="store_true", help="do not time a fresh load")
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
