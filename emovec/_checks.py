"""Checks of a bank's tensors and placements, shared by construction and loading."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from emovec._placement import Placement

__all__ = [
    "DIRECTION_RATIO_RANGE",
    "RESERVED_NAMES",
    "check_name",
    "validate_bank",
]

# Plausible ‖vector_l‖ / hidden_norms[l] for a layer where an emotion's vector is not zero.
# Measured: 0.0049–0.080 in the shipped SmolLM2-135M and Gemma-3-270M banks, 0.056–0.21 in
# banks extracted from the tests' tiny random models (every architecture, raw and centred);
# a difference of two mean hidden states can hardly exceed two hidden norms. The range is
# ~5000x wider on each side; one flipped exponent bit multiplies a norm by 2**32 or more
# (161.5 -> 6.9e11) or less, which it always catches (the file hash catches the rest).
DIRECTION_RATIO_RANGE = (1e-6, 1e3)


def validate_bank(
    vectors: Mapping[str, torch.Tensor],
    hidden_norms: torch.Tensor,
    recommended_layers: tuple[int, ...] | None,
    placements: Mapping[str, Placement],
) -> None:
    """Raise ``ValueError`` (``TypeError``) unless the bank's parts fit together.

    ``vectors`` and ``hidden_norms`` are float32 CPU tensors, ``vectors`` non-empty.
    """
    shapes = {name: tuple(v.shape) for name, v in vectors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"Every vector must be [num_layers, hidden_size]; got {shapes}.")
    for name, vector in vectors.items():
        bad = (~torch.isfinite(vector)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"Emotion {name!r} has NaN or infinite values at layers {bad}; the "
                "extraction went wrong (e.g. an overflowing dtype): extract again in float32."
            )
    if hidden_norms.shape != (first[0],):
        raise ValueError(
            f"hidden_norms has shape {tuple(hidden_norms.shape)}, expected ({first[0]},)."
        )
    if not (torch.isfinite(hidden_norms).all() and (hidden_norms > 0).all()):
        raise ValueError("hidden_norms must be finite and positive at every layer.")
    _check_ratios(vectors, hidden_norms)
    band = recommended_layers
    if band is not None and not all(0 <= i < first[0] for i in band):
        raise ValueError(f"recommended_layers {list(band)} out of range for {first[0]} layers.")
    for emotion, placement in placements.items():
        if not isinstance(placement, Placement):
            raise TypeError(f"{emotion!r}'s placement must be a Placement, not {placement!r}.")
        if emotion not in vectors:
            raise ValueError(f"A placement names {emotion!r}, which the bank lacks.")
        if not all(0 <= i < first[0] for i in placement.layers):
            raise ValueError(
                f"{emotion!r} is placed at layers {list(placement.layers)}, out of range "
                f"for {first[0]} layers."
            )


def _check_ratios(vectors: Mapping[str, torch.Tensor], hidden_norms: torch.Tensor) -> None:
    """Refuse hidden norms implausible for the vectors (see :data:`DIRECTION_RATIO_RANGE`)."""
    low, high = DIRECTION_RATIO_RANGE
    for name, vector in vectors.items():
        norms = vector.double().norm(dim=1)
        ratios = norms / hidden_norms.double()
        bad = ((norms > 0) & ((ratios < low) | (ratios > high))).nonzero().flatten().tolist()
        if bad:
            layer = bad[0]
            raise ValueError(
                f"hidden_norms[{layer}] = {float(hidden_norms[layer]):.4g} is "
                f"implausible for emotion {name!r}'s vector of norm {float(norms[layer]):.4g} "
                f"there (ratio {float(ratios[layer]):.3g}, outside {list(DIRECTION_RATIO_RANGE)}"
                f"; layers {bad}): the hidden norms are corrupt or belong to other vectors. "
                "Extract the vectors again."
            )


# The keyword parameters of emovec.steer (and its positional ones): an emotion of one of
# these names could not be given a strength as steer(model, vecs, name=α).
RESERVED_NAMES: frozenset[str] = frozenset(
    {
        "model",
        "vectors",
        "strengths",
        "layers",
        "blocks",
        "scale",
        "positions",
        "method",
        "schedule",
        "rows",
        "preset",
        "max_dose",
        "guard",
        "tokenizer",
    }
)


def check_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"Emotion names must be strings, not {name!r}.")
    if not name or name != name.strip() or not name.isprintable():
        raise ValueError(
            f"Emotion name {name!r} cannot be stored: use a non-empty name without control "
            "characters or surrounding spaces."
        )
    if name in RESERVED_NAMES:
        raise ValueError(
            f"Emotion name {name!r} is a parameter of emovec.steer, so steer(model, vecs, "
            f"{name}=...) could not steer it; rename the emotion (reserved: "
            f"{sorted(RESERVED_NAMES)})."
        )
