"""Make a vector for an emotion of your own, "calm", from a handful of your own texts.

Each pair tells the same moment twice: once with the emotion, once neutrally. The vector is,
per decoder layer, the mean hidden-state difference between the two. The example saves the
bank to a file, loads it back, and answers two queries plain and steered towards calm.

Run it from anywhere, offline: ``python examples/custom_emotion.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from emovec import EmotionVectors, PromptPair, extract, load_model, steer

# (emotional, neutral): the same facts, with and without the emotion. More and more varied
# pairs give a cleaner vector; the shipped emotions use 110 each.
CALM = [
    PromptPair(
        "I sat by the lake, breathing slowly, completely at peace as the water lapped the shore.",
        "I sat by the lake as the water lapped the shore.",
    ),
    PromptPair(
        "The train was late, but I just smiled, relaxed, and let the quiet minutes drift by.",
        "The train was late, and I waited on the platform for a few minutes.",
    ),
    PromptPair(
        "Lying in the grass, I felt serene and unhurried, my mind still as the evening sky.",
        "I lay in the grass in the evening and looked at the sky.",
    ),
    PromptPair(
        "I poured the tea gently, savouring the warmth, calm and content in the silent kitchen.",
        "I poured the tea in the kitchen.",
    ),
    PromptPair(
        "The exam was tomorrow, yet I felt tranquil, steady and untroubled as I closed my notes.",
        "The exam was tomorrow, and I closed my notes.",
    ),
    PromptPair(
        "Walking home in the soft rain, I was peaceful, every step slow and easy.",
        "I walked home in the rain.",
    ),
    PromptPair(
        "I listened to the waves at night, soothed, relaxed and utterly at ease.",
        "I listened to the waves at night.",
    ),
    PromptPair(
        "When the meeting ran long, I stayed composed and serene, breathing deeply and slowly.",
        "The meeting ran long, and I stayed until it ended.",
    ),
]
QUERIES = ["How was your commute this morning?", "What did you do last weekend?"]
NEW_TOKENS = 24
STRENGTH = 1.0  # α = 1: the everyday relative dose, on the bank's default layer band


def main() -> None:
    """Extract "calm", round-trip it through a file, and print plain and calm answers."""
    model, tokenizer = load_model()
    bank = extract(
        model, tokenizer, pairs={"calm": CALM}, model_name="smollm2-135m-instruct", progress=False
    )
    print(bank)

    with tempfile.TemporaryDirectory() as folder:
        path = bank.save(Path(folder) / "calm.safetensors")
        calm = EmotionVectors.load(path)  # the file carries the model name, band and norms
    print(
        f"saved and loaded {path.name}: emotions {calm.emotions}, layers {calm.recommended_layers}"
    )

    # The one call answers (greedy, clean); α = 0 is the plain answer.
    plain = steer(model, calm, calm=0.0, tokenizer=tokenizer).answer(
        QUERIES, max_new_tokens=NEW_TOKENS
    )
    steered = steer(model, calm, calm=STRENGTH, tokenizer=tokenizer).answer(
        QUERIES, max_new_tokens=NEW_TOKENS
    )

    for query, before, after in zip(QUERIES, plain, steered, strict=True):
        print(f"\n### {query}")
        print(f"[plain] {' '.join(before.split())}")  # each answer on one line
        print(f"[ calm] {' '.join(after.split())}")


if __name__ == "__main__":
    main()
