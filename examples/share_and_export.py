"""Share a bank on the Hugging Face Hub's layout, and export a mix for llama.cpp / EasySteer.

1. ``save_pretrained`` writes the shipped bank as a Hub folder (the vector file and a model
   card rendered from the bank's own figures); ``from_pretrained`` reads it back (a repo id
   works the same once the folder is pushed with ``HfApi().upload_folder``).
2. ``export_control_vector`` writes ``0.7 * joy - 0.3 * fear`` as a GGUF control vector,
   the file ``llama-server --control-vector`` and EasySteer read; ``load_control_vector``
   brings it back as a one-emotion bank, which steers exactly as the mix did.

Run it from anywhere, offline: ``python examples/share_and_export.py [folder]`` (default: a
temporary folder).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from emovec import (
    EmotionVectors,
    export_control_vector,
    load_control_vector,
    load_model,
    steer,
)
from emovec.prebuilt import prebuilt_path

QUERY = "Tell me about your morning."


def main(folder: Path) -> None:
    """Save, load, export and import; print what each step made."""
    model, tokenizer = load_model()
    path = prebuilt_path("smollm2-135m-instruct")
    assert path is not None, "emovec ships vectors for smollm2-135m-instruct"
    vectors = EmotionVectors.load(path)

    hub = vectors.save_pretrained(folder / "smollm2-emotions")
    card = (hub / "README.md").read_text(encoding="utf-8")
    print(f"saved {sorted(p.name for p in hub.iterdir())}; the card begins:")
    print("\n".join(card.splitlines()[:12]))
    again = EmotionVectors.from_pretrained(hub)
    print(f"from_pretrained: emotions {again.emotions}")

    mix = 0.7 * again["joy"] - 0.3 * again["fear"]
    gguf = export_control_vector(mix, folder / "joy-not-fear.gguf")
    print(f"exported {gguf.name}: llama-server -m MODEL.gguf --control-vector {gguf.name}")
    imported = load_control_vector(gguf, model, tokenizer, emotion="joy_not_fear")
    original = steer(model, mix)
    returned = steer(model, imported, joy_not_fear=1.0)
    same = original.layers == returned.layers and all(
        torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(original.deltas(), returned.deltas(), strict=True)
    )
    print(f"the imported file adds what the mix adds at layers {list(returned.layers)}: {same}")

    answers = {
        "plain": steer(model, again, joy=0.0, tokenizer=tokenizer),
        "mix": steer(model, mix, tokenizer=tokenizer),
        "imported": steer(model, imported, joy_not_fear=1.0, tokenizer=tokenizer),
    }
    # The imported bank records no decoding: answer all three with the shipped bank's.
    decoding = again.generation_kwargs()
    print(f"### {QUERY}")
    for label, chat in answers.items():
        print(f"[{label:>8}] {chat.answer(QUERY, max_new_tokens=24, **decoding)}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as temporary:
            main(Path(temporary))
