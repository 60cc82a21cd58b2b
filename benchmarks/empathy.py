"""Empathic replies, measured: recognising the emotion of held-out user messages from the
model's own hidden states, and the judged emotion of the replies the policy chose.

Recognition: the shipped labelled user messages (``emovec/data/user_messages.jsonl``: six
labels, the five basic emotions and neutral; 12 per label to fit, 24 per label held out). The
policy's probe is fitted on (a) the calibration messages (the library's default), (b) the
shipped hand-written answers (60 emotional answers per emotion, 60 neutral answers as
"neutral"), (c) both, and scored on the held-out messages: per label, and for messages that
name their emotion (explicit) or only imply it. The offline judges (``nade``, the prototype
judge) name one of the five emotions for the emotional held-out messages, as a reference.

Replies (``--replies``): every held-out message answered plain and by the policy's mix through
the one call (the shipped bank, greedy, 48 tokens, its repetition penalty, clean decoding);
both judges name each reply's emotion. Reported per true label: the share of replies judged
joy (the table's warmth) and judged as the user's own emotion (mirrored), plain vs policy;
the share of degenerate replies and of replies with invented words; example replies.
``--table sympathy`` compares another table (see ``TABLES``).

    OMP_NUM_THREADS=1 python benchmarks/empathy.py [--replies]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from emovec import EmotionVectors, load_model, steer
from emovec.datasets import BASIC_EMOTIONS, UserMessage, default_answer_pairs, default_user_messages
from emovec.empathy import REPLIES, EmpathicPolicy
from emovec.evaluation.fluency import is_invented
from emovec.evaluation.metrics import is_degenerate
from emovec.evaluation.scoring import NadeScorer, PrototypeScorer

LABELS = (*BASIC_EMOTIONS, "neutral")
# The tables compared: the default (REPLIES); "warm", which met anger, fear and disgust with
# their own vector suppressed and some joy, and sadness with joy; "sympathy", which meets
# sadness with a little of its own and the others by suppressing the user's emotion alone.
TABLES = {
    "default": REPLIES,
    "warm": {
        "joy": {"joy": 0.8},
        "sadness": {"joy": 0.5},
        "anger": {"anger": -0.5, "joy": 0.4},
        "fear": {"fear": -0.5, "joy": 0.4},
        "disgust": {"disgust": -0.5, "joy": 0.3},
        "neutral": {},
    },
    "sympathy": {
        "joy": {"joy": 0.8},
        "sadness": {"sadness": 0.4},
        "anger": {"anger": -0.5},
        "fear": {"fear": -0.5},
        "disgust": {"disgust": -0.5},
        "neutral": {},
    },
}
PER_LABEL = 60  # answers per label in the answers training set


def _answers() -> list[UserMessage]:
    """Hand-written answers as labelled texts: emotional ones by emotion, neutral ones."""
    pairs = default_answer_pairs()
    texts = [
        UserMessage(p.emotional, e, "answer", False)
        for e, ps in pairs.items()
        for p in ps[:PER_LABEL]
    ]
    neutral = [p.neutral for ps in pairs.values() for p in ps]
    picked = neutral[:: max(1, len(neutral) // PER_LABEL)][:PER_LABEL]
    return texts + [UserMessage(t, "neutral", "answer", False) for t in picked]


def _accuracy(
    predicted: Sequence[str], messages: Sequence[UserMessage], keep: object = None
) -> str:
    rows = [
        p == m.emotion
        for p, m in zip(predicted, messages, strict=True)
        if keep is None or keep(m)  # type: ignore[operator]
    ]
    return f"{np.mean(rows):.2f}" if rows else "–"


def _implied(message: UserMessage) -> bool:
    return not message.explicit and message.emotion != "neutral"


def _judged(judge: object, texts: Sequence[str]) -> list[str]:
    columns = [list(judge.emotions).index(e) for e in BASIC_EMOTIONS]  # type: ignore[attr-defined]
    return [BASIC_EMOTIONS[i] for i in judge(texts)[:, columns].argmax(axis=1)]  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replies", action="store_true", help="also generate and judge replies")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--table", choices=sorted(TABLES), default="default")
    parser.add_argument("--examples", type=int, default=2, help="replies shown per label")
    args = parser.parse_args()

    model, tokenizer = load_model()
    bank = EmotionVectors.load("vectors/smollm2-135m-instruct.safetensors")
    calibration, held = default_user_messages("calibration"), default_user_messages("heldout")
    sets = {
        "calibration messages (default)": calibration,
        "answers": _answers(),
        "both": calibration + _answers(),
    }
    print(
        f"{len(held)} held-out messages; training sets: "
        + ", ".join(f"{k} {len(v)}" for k, v in sets.items())
    )

    header = (
        "| fitted on | all | " + " | ".join(LABELS) + " | explicit | implicit | CV on its set |"
    )
    lines = [header, "|---" * (len(LABELS) + 5) + "|"]
    policies = {}
    for name, messages in sets.items():
        started = time.perf_counter()
        policy = EmpathicPolicy.fit(model, tokenizer, bank, messages)
        predicted = [r.emotion for r in policy.recognise([m.text for m in held])]
        cv = policy.classifier.cross_validation_
        per_label = [_accuracy(predicted, held, lambda m, e=e: m.emotion == e) for e in LABELS]
        lines.append(
            f"| {name} | {_accuracy(predicted, held)} | "
            + " | ".join(per_label)
            + f" | {_accuracy(predicted, held, lambda m: m.explicit)}"
            + f" | {_accuracy(predicted, held, _implied)}"
            + f" | {cv.accuracy:.2f} ± {cv.standard_error:.2f} |"  # type: ignore[union-attr]
        )
        policies[name] = policy
        print(f"{name}: fitted and scored in {time.perf_counter() - started:.0f} s")
    emotional = [m for m in held if m.emotion != "neutral"]
    judged: dict[str, list[str]] = {}
    for name, judge in (("nade", NadeScorer()), ("prototype judge", PrototypeScorer())):
        named = judged[name] = _judged(judge, [m.text for m in emotional])
        per_label = [
            _accuracy(named, emotional, lambda m, e=e: m.emotion == e) for e in BASIC_EMOTIONS
        ]
        lines.append(
            f"| judge: {name} (five emotions) | {_accuracy(named, emotional)} | "
            + " | ".join(per_label)
            + f" | – | {_accuracy(named, emotional, lambda m: m.explicit)}"
            + f" | {_accuracy(named, emotional, lambda m: not m.explicit)} | – |"
        )
    print("\n## Recognition on held-out user messages\n")
    print("\n".join(lines))
    # The judges' agreement as the label: the messages both judges name alike.
    agreed = [
        (i, a)
        for i, (a, b) in enumerate(zip(judged["nade"], judged["prototype judge"], strict=True))
        if a == b
    ]
    default = policies["calibration messages (default)"]
    probe = [r.emotion for r in default.recognise([emotional[i].text for i, _ in agreed])]
    rows = [(p, a, emotional[i].emotion) for p, (i, a) in zip(probe, agreed, strict=True)]
    print(
        f"\nBoth judges agree on {len(agreed)} of {len(emotional)} emotional messages (their "
        f"label is the hand label for {np.mean([a == h for _, a, h in rows]):.2f}); the "
        f"default probe names their label for {np.mean([p == a for p, a, _ in rows]):.2f}:"
    )
    for emotion in BASIC_EMOTIONS:
        mine = [(p, a) for p, a, _ in rows if a == emotion]
        share = f"{np.mean([p == a for p, a in mine]):.2f}" if mine else "–"
        print(f"  {emotion}: {share} of {len(mine)}")
    if not args.replies:
        return

    fitted = policies["calibration messages (default)"]
    policy = EmpathicPolicy(fitted.classifier, TABLES[args.table])
    recognitions = policy.recognise([m.text for m in held])
    mixes = [policy.mix_for(r) for r in recognitions]
    texts = [m.text for m in held]
    replies: dict[str, list[str]] = {"plain": [], "policy": []}
    started = time.perf_counter()
    for start in range(0, len(held), args.batch_size):
        batch = texts[start : start + args.batch_size]
        for way, rows in (
            ("plain", [{}] * len(batch)),
            ("policy", mixes[start : start + len(batch)]),
        ):
            chat = steer(model, bank, rows=rows, tokenizer=tokenizer)
            replies[way] += chat.answer(batch)
    print(f"\nreplies generated in {time.perf_counter() - started:.0f} s")
    print("\n## Judged emotion of the replies (share judged joy / judged as the user's emotion)\n")
    print(
        "| true label | policy's mix | judge | plain: joy | plain: mirrored | policy: joy "
        "| policy: mirrored |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    for judge_name, judge in (("prototype", PrototypeScorer()), ("nade", NadeScorer())):
        named = {way: _judged(judge, texts_) for way, texts_ in replies.items()}
        for label in LABELS:
            index = [i for i, m in enumerate(held) if m.emotion == label]
            shares = []
            for way in ("plain", "policy"):
                joy = np.mean([named[way][i] == "joy" for i in index])
                mirrored = (
                    np.mean([named[way][i] == label for i in index])
                    if label != "neutral"
                    else float("nan")
                )
                shares += [f"{joy:.2f}", f"{mirrored:.2f}"]
            print(
                f"| {label} | {dict(policy.replies.get(label, {}))} | {judge_name} | "
                + " | ".join(shares)
                + " |"
            )
    for way, answers in replies.items():
        degenerate = np.mean([is_degenerate(a) for a in answers])
        invented = np.mean([is_invented(a) for a in answers])
        print(f"\n{way}: degenerate {degenerate:.2f}, invented words {invented:.2f}")
    for label in LABELS:
        for i in [i for i, m in enumerate(held) if m.emotion == label][: args.examples]:
            print(
                f"\n[{label}] {texts[i]}\n  plain:  {replies['plain'][i]}\n"
                f"  policy ({mixes[i]}): {replies['policy'][i]}"
            )


if __name__ == "__main__":
    main()
