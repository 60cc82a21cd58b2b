"""Steer the embedded SmolLM2-135M-Instruct with the shipped emotion vectors.

Answers two queries three ways, side by side: plain; with joy at α = 1 (the trained vectors
at their calibrated layers, weights and strength: plain ``steer``, one forward pass per
token); and with the vector arithmetic ``0.7 * joy - 0.3 * fear``.

Run it from anywhere, offline: ``python examples/steer_and_compose.py``.
"""

from __future__ import annotations

from emovec import EmotionVectors, load_model, steer
from emovec.prebuilt import prebuilt_path

QUERIES = ["Tell me about your morning.", "Describe the town where you live."]
NEW_TOKENS = 24


def main() -> None:
    """Print each query's plain, joyful and composed answers."""
    model, tokenizer = load_model()  # the embedded default; or any Hugging Face id or path
    # The vectors shipped with emovec for this model (in a checkout, the same file is
    # vectors/smollm2-135m-instruct.safetensors).
    path = prebuilt_path("smollm2-135m-instruct")
    assert path is not None, "emovec ships vectors for smollm2-135m-instruct"
    vectors = EmotionVectors.load(path)
    print(vectors)

    # The one call: steer(..., tokenizer=) answers as the bank was calibrated (its layers,
    # weights and strength, its decoding, clean decoding; greedy), one forward pass per
    # token. α = 0 answers plain, with the same decoding.
    plain = steer(model, vectors, joy=0.0, tokenizer=tokenizer).answer(
        QUERIES, max_new_tokens=NEW_TOKENS
    )
    joyful = steer(model, vectors, joy=1.0, tokenizer=tokenizer).answer(
        QUERIES, max_new_tokens=NEW_TOKENS
    )

    # Vector arithmetic: emotions combine per emotion in the bank's units, so this is
    # steer(model, vectors, joy=0.7, fear=-0.3). Negative strengths suppress.
    mix = 0.7 * vectors["joy"] - 0.3 * vectors["fear"]
    composed = steer(model, mix, tokenizer=tokenizer).answer(QUERIES, max_new_tokens=NEW_TOKENS)

    print(f"mix: {mix}")
    for query, *answers in zip(QUERIES, plain, joyful, composed, strict=True):
        print(f"\n### {query}")
        for label, text in zip(("plain", "joy", "mix"), answers, strict=True):
            print(f"[{label:>5}] {' '.join(text.split())}")  # on one line


if __name__ == "__main__":
    main()
