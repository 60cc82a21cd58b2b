"""Data-parallel extraction: two processes under torch.distributed give one process's vectors.

The processes use the gloo backend on the CPU, as ``accelerate launch`` does on a machine
without GPUs; the command-line path is checked through ``accelerate launch`` itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import build_model, build_tokenizer, make_text_pairs

from emovec import EmotionVectors, extract, train
from emovec.extraction import extract_activations

PAIRS = {
    "joy": make_text_pairs("joy", 7, words=5) + make_text_pairs("joy", 4, words=9, seed=1),
    "anger": make_text_pairs("anger", 6, words=7),
}


def _worker(rank: int, world: int, init_file: str, out: str, batch_size: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = build_model("llama", initializer_range=0.2)
        tokenizer = build_tokenizer()
        bank = extract(model, tokenizer, PAIRS, batch_size=batch_size, progress=False)
        activations = extract_activations(
            model, tokenizer, PAIRS, batch_size=batch_size, progress=False
        )
        torch.save(
            {
                "vectors": {e: bank.vector(e) for e in bank.emotions},
                "norms": bank.hidden_norms,
                "pairs": activations.pairs,
                "settings": (bank.settings, activations.settings),
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


# batch size 4: both processes read batches; 64: one batch, so rank 1 reads nothing.
@pytest.mark.parametrize("batch_size", [4, 64])
def test_two_processes_give_the_single_process_vectors(tmp_path: Path, batch_size: int) -> None:
    mp.spawn(
        _worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), batch_size),
        nprocs=2,
        join=True,
    )
    model = build_model("llama", initializer_range=0.2)
    tokenizer = build_tokenizer()
    single = extract(model, tokenizer, PAIRS, batch_size=batch_size, progress=False)
    alone = extract_activations(model, tokenizer, PAIRS, batch_size=batch_size, progress=False)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for emotion in PAIRS:
            torch.testing.assert_close(
                result["vectors"][emotion], single.vector(emotion), rtol=0, atol=1e-5
            )
            for kept, expected in zip(result["pairs"][emotion], alone.pairs[emotion], strict=True):
                torch.testing.assert_close(kept, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(result["norms"], single.hidden_norms, rtol=1e-5, atol=1e-5)
        # The library records how many processes shared the reading (one: nothing recorded).
        expected_settings = (single.settings, alone.settings)
        for settings, reference in zip(result["settings"], expected_settings, strict=True):
            assert settings == {**reference, "processes": 2}
    assert "processes" not in single.settings and "processes" not in alone.settings


@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not (Path(sys.executable).parent / "accelerate").exists(),
    reason="accelerate CLI not installed",
)
def test_cli_extract_under_accelerate_launch(tmp_path: Path) -> None:
    model = build_model("llama", initializer_range=0.2)
    tokenizer = build_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    pairs_file = tmp_path / "pride.jsonl"
    pairs_file.write_text(
        "".join(f'{{"emotional": "{e}", "neutral": "{n}"}}\n' for e, n in PAIRS["joy"])
    )
    launcher = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EMOVEC_CACHE": str(tmp_path / "cache")}
    command = [
        str(launcher) if launcher.exists() else "accelerate",
        "launch",
        # torchrun-style launcher; without GPUs the processes use gloo on the CPU
        # (accelerate's --cpu launcher wants MPI for more than one process).
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "emovec",
        "extract",
        "--model",
        str(tmp_path / "model"),
        "--pairs",
        f"pride={pairs_file}",
        "--batch-size",
        "4",
        "--no-center",
        "--out",
        str(tmp_path / "pride.safetensors"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved to") == 1  # only the main process writes
    launched = EmotionVectors.load(tmp_path / "pride.safetensors")
    single = extract(model, tokenizer, {"pride": PAIRS["joy"]}, batch_size=4, progress=False)
    torch.testing.assert_close(launched.vector("pride"), single.vector("pride"), rtol=0, atol=1e-5)
    assert launched.settings["processes"] == 2


# Learnable triples: answers of the emotion's words after a query of filler words.
_JOY = ["happy", "glad", "joyful", "delighted", "thrilled", "smiled", "laughed", "proud"]
TRIPLES = {
    "joy": [
        (" ".join(neutral.split()[:3]), " ".join(_JOY[i:] + _JOY[:i]), neutral)
        for i, (_, neutral) in enumerate(make_text_pairs("joy", 8, words=6, seed=2))
    ]
}
TRAINING = {"steps": 6, "batch_size": 4, "eval_every": 2, "learning_rate": 0.3, "precision": None}


def _train_worker(rank: int, world: int, init_file: str, out: str, objective: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = build_model("llama", initializer_range=0.2)
        bank = train(
            model, build_tokenizer(), TRIPLES, objective=objective, progress=False, **TRAINING
        )
        torch.save(
            {"vectors": bank.vector("joy"), "settings": bank.settings}, f"{out}/train{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("objective", ["lm", "lm+distill"])
def test_two_processes_train_the_single_process_vectors(tmp_path: Path, objective: str) -> None:
    """Also with a KL term, whose reference distributions every process computes once."""
    arguments = (2, str(tmp_path / "init"), str(tmp_path), objective)
    mp.spawn(_train_worker, args=arguments, nprocs=2, join=True)
    model = build_model("llama", initializer_range=0.2)
    single = train(
        model, build_tokenizer(), TRIPLES, objective=objective, progress=False, **TRAINING
    )
    assert float(single.vector("joy").norm()) > 0
    for rank in (0, 1):
        result = torch.load(tmp_path / f"train{rank}.pt")
        torch.testing.assert_close(result["vectors"], single.vector("joy"), rtol=1e-4, atol=1e-5)
        shared = result["settings"]["training"]["joy"]
        alone = single.settings["training"]["joy"]
        assert shared["best_step"] == alone["best_step"]
        assert result["settings"]["processes"] == 2
