"""Load on ``emovec serve``: N concurrent, differently steered requests against serving the
same requests one at a time, on the embedded model.

The app (:func:`emovec.server.create_app`, the embedded SmolLM2-135M-Instruct and its shipped
bank) runs in this process on 127.0.0.1 (a free port); the official ``openai`` client sends,
from N threads at once, N streamed requests with N different mixes (greedy, a fixed number of
new tokens). Reported per N, all measured in this one run: the throughput (new tokens per
second over the wall time) and its ratio to the same N requests sent one after another, the
median and 95th-percentile latency, and the median time to the first token. Every loop is
bounded in count, every wait in time.

    OMP_NUM_THREADS=2 python benchmarks/serve_load.py [--tokens 32] [--n 1 4 8 16]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from emovec import EmotionVectors, load_model
from emovec.server import ServerOptions, create_app
from emovec.server.run import address_of, listening_socket, make_server

QUESTIONS = [
    "How do I keep homemade bread fresh?",
    "What should I pack for a weekend hike?",
    "Any tips for a job interview tomorrow?",
    "How can I get better at chess?",
]
MIXES = [
    {},
    {"joy": 1.0},
    {"anger": 1.0},
    {"disgust": 1.0},
    {"fear": 1.0},
    {"sadness": 1.0},
    {"joy": 0.7, "fear": -0.3},
    {"joy": 0.5, "sadness": 0.5},
]
TIMEOUT = 600.0  # seconds: the longest any request may take


def _one(client: openai.OpenAI, index: int, tokens: int) -> tuple[float, float, int]:
    """Latency, time to the first token and tokens of one streamed request."""
    started = time.perf_counter()
    first = None
    pieces = 0
    stream = client.chat.completions.create(
        model="bench",
        messages=[{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        max_tokens=tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"emotions": MIXES[index % len(MIXES)]},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            pieces = chunk.usage.completion_tokens
    latency = time.perf_counter() - started
    return latency, first if first is not None else latency, pieces


def _round(client: openai.OpenAI, n: int, tokens: int, together: bool) -> dict[str, float]:
    started = time.perf_counter()
    if together:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda i: _one(client, i, tokens), range(n)))
    else:
        results = [_one(client, i, tokens) for i in range(n)]
    wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    return {
        "wall": wall,
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "first": statistics.median(r[1] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--window-ms", type=float, default=20.0)
    args = parser.parse_args()

    model, tokenizer = load_model()
    bank = EmotionVectors.load("vectors/smollm2-135m-instruct.safetensors")
    options = ServerOptions(
        model_name="bench",
        batch_window=args.window_ms / 1000,
        max_batch=max(args.n),
        max_queue=4 * max(args.n),
    )
    app = create_app(model, tokenizer, bank, options)
    sock = listening_socket("127.0.0.1", 0)
    server = make_server(app, log_level="warning", drain_timeout=TIMEOUT)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise SystemExit("the server did not start within 120 s")
    url = address_of(sock)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
    try:
        _one(client, 0, 4)  # warm up
        print(f"{args.tokens} new tokens per request, window {args.window_ms:g} ms\n")
        print("| N | one at a time: tokens/s | together: tokens/s | ratio | p50 latency (s) "
              "| p95 latency (s) | median first token (s) |")  # fmt: skip
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.n:
            alone = _round(client, n, args.tokens, together=False)
            together = _round(client, n, args.tokens, together=True)
            ratio = together["tokens_per_s"] / alone["tokens_per_s"]
            print(
                f"| {n} | {alone['tokens_per_s']:.1f} | {together['tokens_per_s']:.1f} | "
                f"{ratio:.2f}× | {together['p50']:.2f} | {together['p95']:.2f} | "
                f"{together['first']:.2f} |",
                flush=True,
            )
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


if __name__ == "__main__":
    main()
