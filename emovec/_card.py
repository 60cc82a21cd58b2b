"""The model card of a bank: YAML front matter for the Hugging Face hub, then what the bank
holds and records (how it was made, each emotion's placement, calibration and training
figures), rendered from the bank alone; figures the caller measured are shown as such."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

if TYPE_CHECKING:
    from emovec.vectors import EmotionVectors

__all__ = ["TAGS", "Results", "looks_like_repo_id", "render_card"]

TAGS = ("emovec", "steering-vectors", "emotion", "control-vector")

Results = Mapping[str, Mapping[str, float]]

# The calibration figures of a chosen placement, in the order shown: key → column.
_CALIBRATION = {
    "alpha": "α (in the dose)",
    "success": "success",
    "retention": "topic retention",
    "invented": "invented words",
    "degenerate": "degeneration",
    "offensive": "offensive",
}
# An emotion's training record: key → column.
_TRAINING = {
    "best_step": "best step",
    "held_out_loss": "best held-out loss",
    "final_train_loss": "final training loss",
    "triples": "triples",
    "held_out": "held-out triples",
    "seconds": "seconds",
}
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_PLAIN_YAML = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def render_card(
    bank: EmotionVectors, *, results: Results | None = None, license: str | None = None
) -> str:
    """The model card of ``bank``: YAML front matter, then what the bank holds and records.

    Everything is rendered from the bank (and the caller's ``results``); what the bank does
    not record is said to be missing.

    Raises:
        ValueError: If ``results`` names an emotion the bank lacks or holds a value that is
            not a number, or ``license`` is not a one-line text.
        TypeError: If ``results`` is not a mapping of mappings.
    """
    checked = _checked_results(bank, results)
    parts = [
        _front_matter(bank, license),
        _introduction(bank),
        _emotions_section(bank),
        _training_section(bank),
        _results_section(checked),
        _usage(bank),
    ]
    return "\n".join(part for part in parts if part)


def _front_matter(bank: EmotionVectors, license: str | None) -> str:
    lines = ["---", "library_name: emovec", "tags:", *(f"- {tag}" for tag in TAGS)]
    if looks_like_repo_id(bank.model_name):
        lines.append(f"base_model: {bank.model_name}")
    if license is not None:
        if not isinstance(license, str) or not license.strip() or "\n" in license:
            raise ValueError(f"license must be one line of text (e.g. 'mit'), not {license!r}.")
        text = license.strip()
        lines.append(f"license: {text if _PLAIN_YAML.fullmatch(text) else json.dumps(text)}")
    return "\n".join([*lines, "---", ""])


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` looks like a hub model id, ``owner/name``."""
    if not _REPO_ID.fullmatch(name) or len(name) > 96:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _introduction(bank: EmotionVectors) -> str:
    emotions = ", ".join(_md(e) for e in bank.emotions)
    band = bank.recommended_layers
    lines = [
        f"# Emotion vectors for {_code(bank.model_name)}",
        "",
        f"An emovec bank of emotion steering vectors for "
        f"{_code(bank.model_name)}: for each of its {len(bank)} emotions ({emotions}) one "
        f"direction per decoder layer ({bank.num_layers} layers × {bank.hidden_size} hidden "
        f"units), written by emovec {_md(bank.version)}. Steering adds an emotion's vectors "
        "to the model's hidden states while it generates.",
        "",
        f"Recommended layers (the default band): {_layers(band) if band else 'not recorded'}.",
        "",
        "## How it was made",
        "",
    ]
    table = _settings_table(bank.settings)
    how = _how_made(bank.settings)
    lines += [f"{how} The recorded settings:", "", *table] if table else [how]
    return "\n".join([*lines, ""])


def _how_made(settings: Mapping[str, Any]) -> str:
    estimator = settings.get("estimator")
    if estimator is None:
        return "The bank does not record how it was made."
    if estimator == "trained":
        return (
            "Trained with `emovec.train`: per emotion, vectors learned by gradient descent with "
            "the model frozen."
        )
    if estimator == "imported":
        return (
            "Imported from a GGUF control vector with `emovec.load_control_vector`: the file's "
            "directions, added exactly at α = 1."
        )
    return (
        f"Extracted with `emovec.extract` (estimator {_code(str(estimator))}): per layer, from "
        "hidden states of paired emotional and neutral texts."
    )


def _settings_table(settings: Mapping[str, Any]) -> list[str]:
    """The bank's settings that fit a cell; the larger records are named, not shown."""
    rows, others = [], []
    for key, value in settings.items():
        if key in ("calibration", "training"):
            continue
        shown = _setting(key, value)
        if shown is None:
            others.append(key)
        else:
            rows.append(f"| {_cell(key)} | {_cell(shown)} |")
    lines = ["| setting | value |", "|---|---|", *rows] if rows else []
    if others:
        named = ", ".join(_code(k) for k in sorted(others))
        lines += ["", f"Also recorded (see `vecs.settings`): {named}."]
    return lines


def _setting(key: str, value: object) -> str | None:
    if value is None or isinstance(value, (bool, str, Real)):
        return _value(value)
    if isinstance(value, Sequence) and all(isinstance(v, int) for v in value) and key == "layers":
        return _layers(value)
    if isinstance(value, (Sequence, Mapping)) and len(value) <= 12:
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        if all(v is None or isinstance(v, (bool, str, Real)) for _, v in items):
            if isinstance(value, Mapping):
                return ", ".join(f"{k} {_value(v)}" for k, v in value.items())
            return ", ".join(_value(v) for v in value)
    return None


def _emotions_section(bank: EmotionVectors) -> str:
    calibration = bank.settings.get("calibration")
    recorded = calibration if isinstance(calibration, Mapping) else {}
    found = recorded.get("chosen")
    chosen: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    figures = [k for k in _CALIBRATION if any(_get(chosen, e, k) is not None for e in bank)]
    recipes = any(_get(chosen, e, "recipe") is not None for e in bank)
    header = ["emotion", "layers", "dose", *(_CALIBRATION[k] for k in figures)]
    header += ["recipe"] if recipes else []
    rows = []
    for emotion in bank.emotions:
        placement = bank.placements.get(emotion)
        if placement is None:
            band = bank.recommended_layers
            cells = [emotion, f"{_layers(band)} (bank's)" if band else "default", "default"]
        else:
            cells = [emotion, _layers(placement.layers), _value(placement.dose)]
        cells += [_value(_get(chosen, emotion, k)) for k in figures]
        cells += [_value(_get(chosen, emotion, "recipe"))] if recipes else []
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines = [
        "## Emotions",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *rows,
    ]
    notes = [
        "At α = 1, `steer` applies each emotion at its layers and dose (the dose: Σ over the "
        "layers of ‖added vector‖ / typical ‖hidden state‖)."
    ]
    missing = [e for e in bank.emotions if e not in bank.placements]
    if missing:
        notes.append(
            f"No placement is recorded for {', '.join(_md(e) for e in missing)}: steered at "
            "the bank's recommended layers (else `steer`'s default band) with its default dose."
        )
    weighted = [e for e, p in bank.placements.items() if p.weights is not None]
    if weighted:
        named = ", ".join(_md(e) for e in weighted)
        notes.append(f"Per-layer weights of the dose are recorded for {named}.")
    for emotion, placement in bank.placements.items():
        if _extras(placement):
            notes.append(
                f"{_md(emotion)}'s placement also uses {_extras(placement)}, applied by the one "
                "call (`steer(..., tokenizer=tok)`)."
            )
    notes += _calibration_note(recorded, figures)
    lines += [line for note in notes for line in ("", note)]
    return "\n".join([*lines, ""])


def _extras(placement: Any) -> str:
    used = [n for n in ("instruction", "persona") if getattr(placement, n) is not None]
    if placement.positions is not None:
        used.append(f"positions {placement.positions!r}")
    if placement.schedule is not None:
        used.append(f"a schedule ({placement.schedule.label})")
    if placement.query_guidance is not None:
        used.append(f"query guidance {_value(placement.query_guidance)}")
    return ", ".join(used)


def _calibration_note(recorded: Mapping[str, Any], figures: list[str]) -> list[str]:
    if not figures:
        return [
            "The bank records no calibration: no success, topic retention or fluency figures "
            "were measured for it."
        ]
    how = []
    for key, label in (("scorer", "judge"), ("queries", "queries"), ("split", "split")):
        if recorded.get(key) is not None:
            how.append(f"{label} {_md(_value(recorded[key]))}")
    if recorded.get("target_success") is not None:
        how.append(f"target success {_value(recorded['target_success'])}")
    decoding = recorded.get("decoding")
    if isinstance(decoding, Mapping):
        sampled = "sampled" if decoding.get("do_sample") else "greedy"
        penalty = decoding.get("repetition_penalty")
        how.append(
            f"{sampled} decoding"
            + (f", repetition penalty {_value(penalty)}" if penalty is not None else "")
            + (f", {decoding['max_new_tokens']} new tokens" if "max_new_tokens" in decoding else "")
        )
    lines = [
        "The figures are those the bank's calibration recorded"
        + (f" ({'; '.join(how)})" if how else "")
        + ": success is the share of answers judged to express the emotion, topic retention "
        "the answers' similarity to the unsteered answers' topic, and invented words, "
        "degeneration and offensive the shares of answers with each."
    ]
    if isinstance(decoding, Mapping):
        lines.append("Generate with `**vecs.generation_kwargs()` to decode as the calibration did.")
    return lines


def _training_section(bank: EmotionVectors) -> str:
    training = bank.settings.get("training")
    if not isinstance(training, Mapping) or not training:
        return ""
    emotions = [e for e in bank.emotions if isinstance(training.get(e), Mapping)]
    keys = [k for k in _TRAINING if any(_get(training, e, k) is not None for e in emotions)]
    history = any(isinstance(_get(training, e, "held_out_history"), list) for e in emotions)
    header = ["emotion", *(_TRAINING[k] for k in keys)]
    header += ["held-out loss, first → last measured"] if history else []
    rows = []
    for emotion in emotions:
        cells = [emotion, *(_value(_get(training, emotion, k)) for k in keys)]
        if history:
            losses = _get(training, emotion, "held_out_history")
            shown = f"{_value(losses[0])} → {_value(losses[-1])}" if losses else "—"
            cells.append(shown)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    said = [
        f"{label} {_md(_value(bank.settings[key]))}"
        for key, label in (("objective", "objective"), ("steps", "steps"))
        if key in bank.settings
    ]
    lines = [
        "## Training",
        "",
        "The training record of each emotion" + (f" ({', '.join(said)})" if said else "") + ":",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *rows,
    ]
    return "\n".join([*lines, ""])


def _checked_results(bank: EmotionVectors, results: Results | None) -> dict[str, dict[str, float]]:
    if results is None:
        return {}
    if not isinstance(results, Mapping):
        raise TypeError(f"results must map emotions to {{metric: number}}, not {results!r}.")
    checked: dict[str, dict[str, float]] = {}
    for emotion, scores in results.items():
        if emotion not in bank.emotions:
            raise ValueError(
                f"results name the emotion {emotion!r}, which the bank lacks ({bank.emotions})."
            )
        if not isinstance(scores, Mapping):
            raise TypeError(f"results[{emotion!r}] must map metrics to numbers, not {scores!r}.")
        checked[emotion] = {}
        for metric, value in scores.items():
            if not (isinstance(metric, str) and metric.strip()):
                raise ValueError(f"results[{emotion!r}] has a metric name {metric!r}: use text.")
            if isinstance(value, bool) or not isinstance(value, Real):
                raise ValueError(f"results[{emotion!r}][{metric!r}] = {value!r} is no number.")
            if math.isinf(value):
                raise ValueError(f"results[{emotion!r}][{metric!r}] is not finite.")
            checked[emotion][metric] = float(value)
    return checked


def _results_section(results: Mapping[str, Mapping[str, float]]) -> str:
    if not results:
        return ""
    metrics = list(dict.fromkeys(m for scores in results.values() for m in scores))
    rows = [
        "| " + " | ".join(_cell(c) for c in [e, *(_value(s.get(m)) for m in metrics)]) + " |"
        for e, s in results.items()
    ]
    lines = [
        "## Results",
        "",
        "Held-out scores measured by the person who published this bank (not recorded in the "
        "bank itself):",
        "",
        "| emotion | " + " | ".join(_cell(m) for m in metrics) + " |",
        "|" + "---|" * (len(metrics) + 1),
        *rows,
    ]
    return "\n".join([*lines, ""])


def _usage(bank: EmotionVectors) -> str:
    emotion = bank.emotions[0]
    call = f"{emotion}=1.0" if emotion.isidentifier() else f"{{{emotion!r}: 1.0}}"
    model = json.dumps(bank.model_name, ensure_ascii=False)
    return "\n".join(
        [
            "## Usage",
            "",
            "```bash",
            "pip install emovec",
            "```",
            "",
            "```python",
            "from emovec import EmotionVectors, load_model, steer",
            "",
            'vecs = EmotionVectors.from_pretrained("<this repo id or folder>")',
            f"model, tok = load_model({model})  # the model the bank was made from",
            f"print(steer(model, vecs, {call}, tokenizer=tok)"
            '.answer("How do I keep bread fresh?"))',
            "",
            "# or around your own generate:",
            'inputs = tok.apply_chat_template([{"role": "user", "content": "Hi!"}],',
            '                                 add_generation_prompt=True, return_tensors="pt",',
            "                                 return_dict=True)",
            f"with steer(model, vecs, {call}):",
            "    out = model.generate(**inputs, max_new_tokens=60, **vecs.generation_kwargs())",
            "```",
            "",
        ]
    )


# --- formatting ---------------------------------------------------------------------------


def _get(records: Mapping[str, Any], emotion: str, key: str) -> Any:
    record = records.get(emotion)
    return record.get(key) if isinstance(record, Mapping) else None


def _value(value: object) -> str:
    """A number with at most three decimals (``—`` for none or NaN), or the text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Real):
        number = float(value)
        if math.isnan(number):
            return "—"
        if math.isinf(number) or abs(number) >= 1e6:
            return f"{number:g}"
        shown = f"{number:.3f}".rstrip("0").rstrip(".")
        return "0" if shown == "-0" else shown
    return str(value)


def _layers(layers: Sequence[int] | None) -> str:
    """``10–18`` for a contiguous band, else its runs: ``2–4, 8``."""
    if not layers:
        return "—"
    ordered = sorted(set(layers))
    runs: list[list[int]] = []
    for layer in ordered:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _md(text: str) -> str:
    """``text`` in running Markdown, its markup characters escaped."""
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", " ".join(str(text).split()))


def _code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it holds."""
    text = " ".join(text.split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if longest else text
    return f"{fence}{padded}{fence}"
