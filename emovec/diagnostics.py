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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emovec._files import atomic_path
from emovec.estimators import layer_cosine, lda_direction
from emovec.layers import _half_up, band_width

__all__ = ["DEFAULT_DEPTH", "DEFAULT_SATURATION", "LayerDiagnostics", "diagnose"]

_EPS = 1e-12
DEFAULT_DEPTH = (0.2, 0.75)
# A window counts as saturated at this share of the best window's score (see recommended_layers).
DEFAULT_SATURATION = 0.95


def _floats(t: torch.Tensor) -> list[float | None]:
    # Strict JSON has no NaN or Infinity: undefined values become null.
    return [float(x) if math.isfinite(x) else None for x in t.tolist()]


@dataclass(frozen=True, eq=False)
class LayerDiagnostics:
    """Per-emotion, per-layer separability of emotion directions.

    Every tensor is float32 ``[num_emotions, num_layers]``, rows in the order of
    ``emotions``. Build one with :func:`diagnose`.

    Attributes:
        emotions: Emotion names, the row order of every tensor.
        fisher_ratio: Fisher ratio of the projections onto the mean difference.
        heldout_accuracy: k-fold pairwise accuracy of the mean difference (NaN for an
            emotion with a single pair).
        consistency: Mean cosine of the pair differences with the mean difference.
        norm: L2 norm of the mean-difference vector.
        relative_norm: ``norm`` over the layer's typical token norm, or ``None`` when no
            token norms were given.
        lda_cosine: Cosine of the LDA direction with the mean difference (NaN for an
            emotion with a single pair).
        n_pairs: Number of pairs behind each emotion's row.
        folds: Number of folds requested for the held-out accuracy (each emotion uses
            ``min(folds, n_pairs)``).
    """

    emotions: tuple[str, ...]
    fisher_ratio: torch.Tensor
    heldout_accuracy: torch.Tensor
    consistency: torch.Tensor
    norm: torch.Tensor
    relative_norm: torch.Tensor | None
    lda_cosine: torch.Tensor
    n_pairs: tuple[int, ...]
    folds: int

    def __post_init__(self) -> None:
        if not self.emotions:
            raise ValueError("LayerDiagnostics needs at least one emotion")
        if len(set(self.emotions)) != len(self.emotions):
            raise ValueError(f"duplicate emotion names: {self.emotions}")
        if len(self.n_pairs) != len(self.emotions):
            raise ValueError("n_pairs must have one entry per emotion")
        shape = self.fisher_ratio.shape
        if len(shape) != 2 or shape[0] != len(self.emotions) or shape[1] < 1:
            raise ValueError(
                f"fisher_ratio must be [num_emotions={len(self.emotions)}, num_layers], got "
                f"{tuple(shape)}"
            )
        fields = {
            "heldout_accuracy": self.heldout_accuracy,
            "consistency": self.consistency,
            "norm": self.norm,
            "lda_cosine": self.lda_cosine,
        }
        if self.relative_norm is not None:
            fields["relative_norm"] = self.relative_norm
        for name, value in fields.items():
            if value.shape != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")

    @property
    def num_layers(self) -> int:
        """Number of layers diagnosed."""
        return int(self.fisher_ratio.shape[1])

    def _row(self, emotion: str) -> int:
        try:
            return self.emotions.index(emotion)
        except ValueError:
            raise ValueError(
                f"unknown emotion {emotion!r}; diagnosed: {', '.join(self.emotions)}"
            ) from None

    def score(self) -> torch.Tensor:
        """One number per emotion and layer: how good a place to steer this emotion it is.

        ``clamp(2·acc − 1, min=0) · clamp(consistency, min=0)``, in ``[0, 1]``. The first
        factor is held-out separability rescaled so chance is 0 and perfect is 1; being
        measured on held-out pairs it does not reward layers where a big hidden size lets
        the vector overfit. The second asks whether the pairs agree on the direction, i.e.
        whether one vector stands for the emotion rather than an average of unrelated
        shifts. Both are needed, hence the product. The Fisher ratio is left out: it is
        unbounded and in-sample, so it would swamp the other two.

        Undefined accuracy (one pair) scores 0.

        Returns:
            ``[num_emotions, num_layers]`` float32.
        """
        separability = (2.0 * self.heldout_accuracy - 1.0).clamp_min(0.0)
        agreement = self.consistency.clamp_min(0.0)
        return torch.nan_to_num(separability * agreement, nan=0.0)

    def ranking(self, emotion: str) -> list[int]:
        """Layers of ``emotion``, best score first (ties keep the shallower layer first).

        Raises:
            ValueError: for an emotion that was not diagnosed.
        """
        row = self.score()[self._row(emotion)]
        order = torch.sort(row, descending=True, stable=True).indices
        return [int(i) for i in order.tolist()]

    def recommended_layers(
        self,
        emotion: str | None = None,
        *,
        width: int | None = None,
        depth: tuple[float, float] = DEFAULT_DEPTH,
        saturation: float = DEFAULT_SATURATION,
    ) -> list[int]:
        """The shallowest contiguous band of layers where the emotion is (nearly) as readable
        as it gets: the first window whose mean score reaches ``saturation`` × the best
        window's.

        Why the shallowest and not the best: separability keeps creeping up with depth long
        after the emotion has become linearly readable, but what steering needs is layers
        that still have the rest of the network after them to turn the shift into words.
        On SmolLM2 (prompt pairs, α = 1, 32 queries) the best-scoring band 18–22 steered
        clearly worse than 12–16 (target emotion on top: joy 0.91 vs 1.00, anger 0.06 vs
        0.22, fear 0.06 vs 0.16); the saturation rule picks 11–15 there.

        Only windows that lie within ``[round(depth[0]·L), round(depth[1]·L))`` are
        considered (half rounded up). The first layers still encode the surface form of the
        tokens and the last ones are committed to predicting the next token, so steering
        there breaks fluency even where the emotion separates well; the middle of the stack
        is where a shift changes *what* is said rather than how it is spelled. When the
        window does not fit in that range, all windows of the whole stack are searched
        instead, and when it does not fit in the stack either, every layer is returned.
        Among equal scores the shallowest window wins.

        Args:
            emotion: One emotion, or ``None`` for the mean score over all emotions.
            width: Number of layers in the band; default ``max(1, round(L / 6))``.
            depth: Fractions of the stack bounding the band, ``0 ≤ lo < hi ≤ 1``.
            saturation: Share of the best window's score a window must reach, in
                ``(0, 1]``; ``1`` picks the best-scoring window.

        Returns:
            Ascending layer indices.

        Raises:
            ValueError: for an unknown emotion, ``width < 1``, an invalid ``depth`` or
                ``saturation``.
        """
        if not 0.0 < saturation <= 1.0:
            raise ValueError(f"saturation must be in (0, 1], got {saturation}")
        num_layers = self.num_layers
        lo_frac, hi_frac = depth
        if not 0.0 <= lo_frac < hi_frac <= 1.0:
            raise ValueError(f"depth must satisfy 0 <= lo < hi <= 1, got {depth}")
        if width is None:
            width = band_width(num_layers)
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        scores = self.score()
        row = scores.mean(dim=0) if emotion is None else scores[self._row(emotion)]
        if width >= num_layers:
            return list(range(num_layers))
        lo, hi = _half_up(lo_frac * num_layers), _half_up(hi_frac * num_layers)
        if hi - lo < width:
            lo, hi = 0, num_layers
        means = row.unfold(0, width, 1).mean(dim=-1).tolist()  # means[s]: window s..s+width-1
        starts = range(lo, hi - width + 1)
        best = max(means[s] for s in starts)
        # Scores are ≥ 0; a tiny tolerance keeps exact ties with the best from being missed.
        first = next(s for s in starts if means[s] >= saturation * best - 1e-12)
        return list(range(first, first + width))

    def to_dict(self, *, depth: tuple[float, float] = DEFAULT_DEPTH) -> dict[str, Any]:
        """JSON-serialisable summary (plain lists; NaN and infinities become ``None``).

        Args:
            depth: Passed to :meth:`recommended_layers`.
        """
        score = self.score()
        per_emotion: dict[str, Any] = {}
        for i, emotion in enumerate(self.emotions):
            per_emotion[emotion] = {
                "n_pairs": self.n_pairs[i],
                "score": _floats(score[i]),
                "heldout_accuracy": _floats(self.heldout_accuracy[i]),
                "fisher_ratio": _floats(self.fisher_ratio[i]),
                "consistency": _floats(self.consistency[i]),
                "norm": _floats(self.norm[i]),
                "relative_norm": (
                    None if self.relative_norm is None else _floats(self.relative_norm[i])
                ),
                "lda_cosine": _floats(self.lda_cosine[i]),
                "ranking": self.ranking(emotion),
                "recommended_layers": self.recommended_layers(emotion, depth=depth),
            }
        return {
            "num_layers": self.num_layers,
            "folds": self.folds,
            "depth": list(depth),
            "emotions": list(self.emotions),
            "recommended_layers": self.recommended_layers(depth=depth),
            "per_emotion": per_emotion,
        }

    def to_markdown(self, *, depth: tuple[float, float] = DEFAULT_DEPTH) -> str:
        """A Markdown report: recommended layers, then one table row per layer.

        Each cell reads ``score (held-out accuracy, consistency)``; layers of the overall
        recommended band are marked with ``*``.

        Args:
            depth: Passed to :meth:`recommended_layers`.
        """
        band = self.recommended_layers(depth=depth)
        score = self.score()
        lines = [
            f"Recommended layers (all emotions): {_format_band(band)}",
            "",
        ]
        lines += [
            f"- {e}: {_format_band(self.recommended_layers(e, depth=depth))}" for e in self.emotions
        ]
        lines += [
            "",
            "Cells: score (held-out accuracy, consistency); * marks the recommended band.",
            "",
            "| layer | " + " | ".join(self.emotions) + " |",
            "|---:|" + "---:|" * len(self.emotions),
        ]

        def fmt(x: float) -> str:
            return f"{x:.2f}" if math.isfinite(x) else "n/a"

        for layer in range(self.num_layers):
            mark = "*" if layer in band else ""
            cells = [
                f"{fmt(float(score[i, layer]))} ({fmt(float(self.heldout_accuracy[i, layer]))}, "
                f"{fmt(float(self.consistency[i, layer]))})"
                for i in range(len(self.emotions))
            ]
            lines.append(f"| {layer}{mark} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path, *, depth: tuple[float, float] = DEFAULT_DEPTH) -> Path:
        """Plot the diagnostics over depth to a PNG, written atomically.

        Four panels (held-out accuracy, Fisher ratio on a log scale, consistency, relative
        norm, or the raw norm without token norms), one line per emotion, with the overall
        recommended band shaded.

        Args:
            path: Output file; parent folders are created. Always PNG, whatever the suffix.
            depth: Passed to :meth:`recommended_layers`.

        Returns:
            The path written.

        Raises:
            ImportError: if matplotlib is not installed.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError(
                "plotting diagnostics needs matplotlib: pip install 'emovec[eval]'"
            ) from err

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        band = self.recommended_layers(depth=depth)
        layers = list(range(self.num_layers))
        if self.relative_norm is not None:
            size, size_label = self.relative_norm, "relative norm (‖v‖ / token norm)"
        else:
            size, size_label = self.norm, "norm ‖v‖"
        panels = [
            (self.heldout_accuracy, "held-out accuracy", False),
            # A log axis cannot show 0: clamp so layers with no separation still plot.
            (self.fisher_ratio.clamp_min(1e-6), "Fisher ratio", True),
            (self.consistency, "consistency (mean cosine)", False),
            (size, size_label, False),
        ]
        # Figure, not pyplot: no global state, no GUI backend, safe in threads and servers.
        fig = Figure(figsize=(11, 8), layout="constrained")
        axes = fig.subplots(2, 2, sharex=True).ravel()
        for ax, (values, label, log) in zip(axes, panels, strict=True):
            for i, emotion in enumerate(self.emotions):
                ax.plot(layers, values[i].tolist(), marker="o", markersize=3, label=emotion)
            ax.axvspan(band[0] - 0.5, band[-1] + 0.5, color="tab:green", alpha=0.12, lw=0)
            ax.set_title(label)
            ax.grid(alpha=0.3)
            if log:
                ax.set_yscale("log")
        axes[0].axhline(0.5, color="grey", ls="--", lw=1)
        for ax in axes[2:]:
            ax.set_xlabel("layer (shallow → deep)")
        axes[0].legend(fontsize="small", ncol=max(1, len(self.emotions) // 6))
        fig.suptitle(f"Emotion directions by layer (recommended band: {_format_band(band)})")

        with atomic_path(path, suffix=".png") as staging:
            fig.savefig(staging, format="png", dpi=120)
        return path


def _format_band(layers: list[int]) -> str:
    if len(layers) == 1:
        return str(layers[0])
    return f"{layers[0]}–{layers[-1]}"


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
