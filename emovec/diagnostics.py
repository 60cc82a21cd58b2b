"""Per-layer diagnostics of emotion directions: where in the stack is an emotion linear?

:func:`diagnose` takes the paired activations of each emotion (``emotional`` and
``neutral``, ``[n_pairs, num_layers, hidden]``, row ``i`` of both is pair ``i``) and
measures, at every layer, how well the mean-difference vector ``v`` separates the two sides:

* ``fisher_ratio``: ``(mean_e − mean_n)² / (var_e + var_n)`` of the projections onto ``v``
  (in-sample, population variances).
* ``heldout_accuracy``: k-fold over pairs; a held-out pair is correct when its emotional
  text projects higher than its neutral one onto ``v`` fitted on the other folds.
* ``consistency``: mean cosine of each pair's difference with ``v``. It is in-sample, so
  pure noise reads about ``1/√n_pairs`` rather than 0.
* ``norm`` / ``relative_norm``: ``‖v‖``, optionally over the typical token norm of the layer.
* ``lda_cosine``: cosine between the LDA direction and ``v``; low values mean the
  within-class covariance is far from isotropic and the two estimators disagree.

The result, :class:`LayerDiagnostics`, ranks layers, recommends a steering band, and exports
to JSON, Markdown and a PNG plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from tqdm.auto import tqdm

from emovec._layer_report import _EPS, DEFAULT_DEPTH, DEFAULT_SATURATION, LayerDiagnostics
from emovec.estimators import layer_cosine, lda_direction

__all__ = ["DEFAULT_DEPTH", "DEFAULT_SATURATION", "LayerDiagnostics", "diagnose"]


def _validate(
    activations: Mapping[str, tuple[torch.Tensor, torch.Tensor]], token_norms: torch.Tensor | None
) -> tuple[int, int]:
    if not activations:
        raise ValueError("diagnose needs activations for at least one emotion")
    shape: tuple[int, int] | None = None
    for emotion, pair in activations.items():
        if not isinstance(emotion, str) or not emotion:
            raise ValueError(f"emotion names must be non-empty strings, got {emotion!r}")
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"{emotion}: expected an (emotional, neutral) pair of tensors")
        emotional, neutral = pair
        if not isinstance(emotional, torch.Tensor) or not isinstance(neutral, torch.Tensor):
            raise ValueError(f"{emotion}: expected an (emotional, neutral) pair of tensors")
        if emotional.dim() != 3 or emotional.shape != neutral.shape:
            raise ValueError(
                f"{emotion}: emotional and neutral must both be [n_pairs, num_layers, hidden], "
                f"got {tuple(emotional.shape)} and {tuple(neutral.shape)}"
            )
        if emotional.shape[0] < 1:
            raise ValueError(f"{emotion}: no pairs")
        if not (torch.isfinite(emotional).all() and torch.isfinite(neutral).all()):
            raise ValueError(f"{emotion}: activations contain NaN or infinite values")
        layers_hidden = (int(emotional.shape[1]), int(emotional.shape[2]))
        if shape is None:
            shape = layers_hidden
        elif layers_hidden != shape:
            raise ValueError(
                f"{emotion}: [num_layers, hidden] is {layers_hidden}, other emotions have {shape}"
            )
    assert shape is not None
    if token_norms is not None and (
        token_norms.shape != (shape[0],)
        or not torch.isfinite(token_norms).all()
        or not (token_norms > 0).all()
    ):
        raise ValueError(
            f"token_norms must be [num_layers={shape[0]}] of positive finite values, got shape "
            f"{tuple(token_norms.shape)}"
        )
    return shape


def _fisher_ratio(emotional: torch.Tensor, neutral: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    unit = v / v.norm(dim=-1, keepdim=True).clamp_min(_EPS)  # [L, H]
    proj_e = (emotional * unit).sum(dim=-1)  # [n, L]
    proj_n = (neutral * unit).sum(dim=-1)
    # Population variances: defined for a single pair too.
    spread = proj_e.var(dim=0, correction=0) + proj_n.var(dim=0, correction=0)
    gap = proj_e.mean(dim=0) - proj_n.mean(dim=0)
    return gap.square() / spread.clamp_min(_EPS)


def _heldout_accuracy(diff: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    n, num_layers = diff.shape[0], diff.shape[1]
    if n < 2:
        return torch.full((num_layers,), math.nan, dtype=diff.dtype)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    correct = torch.zeros(num_layers, dtype=diff.dtype)
    total = diff.sum(dim=0)  # [L, H]; training means by subtraction, not by re-summing
    for test in torch.tensor_split(order, min(folds, n)):
        held = diff[test]
        v = (total - held.sum(dim=0)) / (n - len(test))
        # (e − n)·v > 0 is "the emotional text projects higher"; ties count as half
        # so that a zero vector scores chance, not 0 or 1.
        margin = (held * v).sum(dim=-1)  # [k, L]
        correct += ((margin > 0).to(diff.dtype) + 0.5 * (margin == 0).to(diff.dtype)).sum(0)
    return correct / n


def _consistency(diff: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    norms = diff.norm(dim=-1) * v.norm(dim=-1)  # [n, L]
    dots = (diff * v).sum(dim=-1)
    cos = torch.where(norms > 0, dots / norms.clamp_min(_EPS), 0.0)
    return cos.mean(dim=0)


def diagnose(
    activations: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    token_norms: torch.Tensor | None = None,
    folds: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> LayerDiagnostics:
    """Measure, for every emotion and layer, how well the mean difference separates pairs.

    Args:
        activations: Emotion → ``(emotional, neutral)``, each ``[n_pairs, num_layers,
            hidden]`` with row ``i`` of both the same pair. The number of pairs may differ
            between emotions; layers and hidden size may not.
        token_norms: ``[num_layers]`` typical L2 norm of token hidden states at each layer,
            for ``relative_norm``; ``None`` leaves it out.
        folds: Folds of the held-out accuracy, at least 2; an emotion with fewer pairs uses
            one fold per pair (leave-one-out). With a single pair the accuracy and the LDA
            cosine are NaN (there is nothing to hold out, and no covariance).
        seed: Seed of the permutation that assigns pairs to folds.
        progress: Show a progress bar over emotions.

    Returns:
        The diagnostics, tensors on the CPU.

    Raises:
        ValueError: on empty input, mismatched shapes, non-finite values, bad
            ``token_norms`` or ``folds < 2``.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    num_layers, _ = _validate(activations, token_norms)
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("fisher", "acc", "cons", "norm", "lda")}
    for emotional, neutral in tqdm(activations.values(), desc="diagnose", disable=not progress):
        # On the CPU in float64: cheap next to extraction, and MPS has no float64.
        e = emotional.detach().to("cpu", torch.float64)
        n = neutral.detach().to("cpu", torch.float64)
        diff = e - n
        v = diff.mean(dim=0)  # [L, H]
        rows["fisher"].append(_fisher_ratio(e, n, v))
        rows["acc"].append(_heldout_accuracy(diff, folds, seed))
        rows["cons"].append(_consistency(diff, v))
        rows["norm"].append(v.norm(dim=-1))
        if e.shape[0] >= 2:
            lda = layer_cosine(lda_direction(emotional, neutral), v.to(torch.float32))
            rows["lda"].append(lda.to(torch.float64))
        else:
            rows["lda"].append(torch.full((num_layers,), math.nan, dtype=torch.float64))

    def stack(key: str) -> torch.Tensor:
        return torch.stack(rows[key]).to(torch.float32)

    norm = stack("norm")
    relative = None
    if token_norms is not None:
        relative = norm / token_norms.detach().cpu().to(torch.float32)
    return LayerDiagnostics(
        emotions=tuple(activations),
        fisher_ratio=stack("fisher"),
        heldout_accuracy=stack("acc"),
        consistency=stack("cons"),
        norm=norm,
        relative_norm=relative,
        lda_cosine=stack("lda"),
        n_pairs=tuple(int(pair[0].shape[0]) for pair in activations.values()),
        folds=folds,
    )
