"""Estimators of a per-layer emotion direction from paired activations.

Every estimator takes the activations of the same prompt pairs, ``emotional`` and
``neutral``, each ``[n_pairs, num_layers, hidden]`` (row ``i`` of both is pair ``i``), and
returns one vector per layer, ``[num_layers, hidden]`` float32:

* :func:`mean_difference`: the mean of ``emotional − neutral``, the default.
* :func:`pca_direction`: the first principal direction of the pair differences.
* :func:`lda_direction`: the Fisher/LDA direction ``Σ⁻¹(μ_e − μ_n)`` with a shrunk
  within-class covariance ``Σ``.

PCA and LDA only choose a direction: their vectors are rescaled to the mean difference's
norm at each layer, so a steering strength α means the same whichever estimator made the
bank. Only 3-D input is accepted; a single layer is ``[n, 1, H]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "estimate",
    "layer_cosine",
    "lda_direction",
    "ledoit_wolf_shrinkage",
    "mean_difference",
    "pca_direction",
]

Estimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _validate(emotional: torch.Tensor, neutral: torch.Tensor, *, min_pairs: int, name: str) -> None:
    for label, x in (("emotional", emotional), ("neutral", neutral)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(
                f"{name}: {label} must be [n_pairs, num_layers, hidden], got shape {tuple(x.shape)}"
            )
    if emotional.shape != neutral.shape:
        raise ValueError(
            f"{name}: emotional and neutral differ in shape: {tuple(emotional.shape)} vs "
            f"{tuple(neutral.shape)}"
        )
    n, num_layers, hidden = emotional.shape
    if num_layers < 1 or hidden < 1:
        raise ValueError(f"{name}: empty layer or hidden dimension, shape {tuple(emotional.shape)}")
    if n < min_pairs:
        raise ValueError(f"{name} needs at least {min_pairs} pair(s), got {n}")
    for label, x in (("emotional", emotional), ("neutral", neutral)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: {label} contains NaN or infinite values")


def _work_device(x: torch.Tensor) -> torch.device:
    # MPS has no float64; the decompositions below need it, so they run on the CPU there.
    return torch.device("cpu") if x.device.type == "mps" else x.device


def _rescale(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Give each row of ``direction`` ([L, H]) the norm of the same row of ``reference``."""
    norms = direction.norm(dim=-1, keepdim=True)
    unit = torch.where(norms > 0, direction / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    return unit * reference.norm(dim=-1, keepdim=True)


def mean_difference(emotional: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of ``emotional − neutral``.

    Args:
        emotional: ``[n_pairs, num_layers, hidden]`` activations of the emotional texts.
        neutral: Same shape, the neutral text of each pair.

    Returns:
        ``[num_layers, hidden]`` float32, on the input's device.

    Raises:
        ValueError: on mismatched or non-3-D shapes, no pairs, or non-finite values.
    """
    _validate(emotional, neutral, min_pairs=1, name="mean_difference")
    # float64 accumulation: activations of late layers reach the thousands.
    diff = emotional.to(torch.float64) - neutral.to(torch.float64)
    return diff.mean(dim=0).to(torch.float32)


def pca_direction(emotional: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
    """First principal direction of the pair differences, per layer.

    The differences ``d_i = e_i − n_i`` are deliberately *not* centred: the direction is the
    top right-singular vector of the raw ``[n_pairs, hidden]`` matrix of differences, so a
    shift shared by all pairs dominates it. Centring would subtract exactly that shared
    shift, the emotion we are looking for, and leave only the variation between pairs.

    The sign is chosen so the emotional side projects positive (``mean(d·v) > 0``) and the
    vector is scaled to the norm of the mean difference at that layer.

    Args:
        emotional: ``[n_pairs, num_layers, hidden]`` activations of the emotional texts.
        neutral: Same shape, the neutral text of each pair.

    Returns:
        ``[num_layers, hidden]`` float32, on the input's device.

    Raises:
        ValueError: on mismatched or non-3-D shapes, fewer than 2 pairs, or non-finite
            values.
    """
    _validate(emotional, neutral, min_pairs=2, name="pca_direction")
    device = _work_device(emotional)
    diff = emotional.to(device, torch.float64) - neutral.to(device, torch.float64)
    per_layer = diff.transpose(0, 1)  # [L, n, H]
    _, _, vh = torch.linalg.svd(per_layer, full_matrices=False)
    direction = vh[:, 0, :]  # [L, H], unit rows
    mean = per_layer.mean(dim=1)  # [L, H]
    sign = torch.where((mean * direction).sum(dim=-1, keepdim=True) < 0, -1.0, 1.0)
    vector = _rescale(direction * sign, mean)
    return vector.to(emotional.device, torch.float32)


def _pooled_centred(
    emotional: torch.Tensor, neutral: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Within-class centred rows ``[L, 2n, H]`` and mean differences ``[L, H]``, float64."""
    device = _work_device(emotional)
    e = emotional.to(device, torch.float64).transpose(0, 1)  # [L, n, H]
    n = neutral.to(device, torch.float64).transpose(0, 1)
    mu_e, mu_n = e.mean(dim=1, keepdim=True), n.mean(dim=1, keepdim=True)
    centred = torch.cat([e - mu_e, n - mu_n], dim=1)
    return centred, (mu_e - mu_n).squeeze(1)


def _ledoit_wolf(centred: torch.Tensor) -> torch.Tensor:
    """Ledoit–Wolf λ per layer from centred rows ``[L, m, H]`` (float64, in [0, 1]).

    Everything goes through the ``[m, m]`` Gram matrix, so this costs nothing when the
    hidden size is large: with ``S = XᵀX/m``, ``tr S = ‖X‖²/m`` and ``‖S‖²_F = ‖XXᵀ‖²_F/m²``.
    """
    m, hidden = centred.shape[1], centred.shape[2]
    gram = centred @ centred.transpose(1, 2)  # [L, m, m]
    row_sq = gram.diagonal(dim1=1, dim2=2)  # ‖x_k‖²
    trace = row_sq.sum(dim=1) / m
    fro_sq = gram.square().sum(dim=(1, 2)) / m**2
    mu = trace / hidden
    # ‖S − μI‖²_F: how far the sample covariance is from the shrinkage target.
    delta = (fro_sq - mu.square() * hidden).clamp_min(0.0)
    # Σ_k ‖x_k x_kᵀ − S‖²_F / m²: the estimation noise of S; Σ_k x_kᵀ S x_k = m‖S‖²_F.
    beta = ((row_sq.square().sum(dim=1) - m * fro_sq) / m**2).clamp_min(0.0)
    beta = torch.minimum(beta, delta)
    # δ = 0 means S already is a scaled identity (or zero): shrinking fully loses nothing.
    lam = torch.where(delta > 0, beta / delta.clamp_min(torch.finfo(delta.dtype).tiny), 1.0)
    return lam.clamp(0.0, 1.0)


def ledoit_wolf_shrinkage(emotional: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
    """Ledoit–Wolf shrinkage intensity of the pooled within-class covariance, per layer.

    This is the λ :func:`lda_direction` uses when ``shrinkage=None``: the closed-form
    estimate (Ledoit & Wolf, 2004) of the weight that minimises the expected Frobenius error
    of ``(1−λ)S + λ·(tr S / H)·I``.

    Args:
        emotional: ``[n_pairs, num_layers, hidden]`` activations of the emotional texts.
        neutral: Same shape, the neutral text of each pair.

    Returns:
        ``[num_layers]`` float32 in ``[0, 1]``.

    Raises:
        ValueError: on mismatched or non-3-D shapes, fewer than 2 pairs, or non-finite
            values.
    """
    _validate(emotional, neutral, min_pairs=2, name="ledoit_wolf_shrinkage")
    centred, _ = _pooled_centred(emotional, neutral)
    return _ledoit_wolf(centred).to(emotional.device, torch.float32)


# λ used in place of 0 when the scatter matrix is singular: small enough to be the limit
# λ → 0⁺ in float64, large enough to keep the solve well posed.
_VANISHING_SHRINKAGE = 1e-8


def _solve_shrunk(x: torch.Tensor, delta: torch.Tensor, lam: float, scale: float) -> torch.Tensor:
    """``((1−λ)XᵀX/m + λ·scale·I)⁻¹ δ`` for one layer; ``x`` is ``[m, H]``, float64."""
    m, hidden = x.shape
    if lam >= 1.0:
        return delta / scale
    if lam > 0 and m < hidden:
        # Woodbury through the [m, m] Gram matrix: with n_pairs ≪ hidden (the usual case)
        # this avoids building and factorising a [H, H] matrix per layer.
        #   (aI + bXᵀX)⁻¹ = (1/a)·(I − Xᵀ((a/b)I + XXᵀ)⁻¹X)
        ridge, b = lam * scale, (1.0 - lam) / m
        inner = x @ x.T + (ridge / b) * torch.eye(m, dtype=x.dtype, device=x.device)
        return (delta - x.T @ torch.linalg.solve(inner, x @ delta)) / ridge
    if lam > 0 or m >= hidden:
        cov = (1.0 - lam) * (x.T @ x) / m
        cov.diagonal().add_(lam * scale)
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) == 0:
            return torch.cholesky_solve(delta.unsqueeze(-1), chol).squeeze(-1)
        if lam > 0:  # numerically singular despite the ridge; should not happen
            return torch.linalg.pinv(cov, hermitian=True) @ delta
    # λ = 0 on a singular scatter matrix (always so with fewer rows than hidden units):
    # take the limit λ → 0⁺, which keeps the part of δ outside the span of the scatter,
    # rather than the pseudo-inverse, which would keep only the part inside it (the noise).
    return _solve_shrunk(x, delta, _VANISHING_SHRINKAGE, scale)


def lda_direction(
    emotional: torch.Tensor, neutral: torch.Tensor, *, shrinkage: float | None = None
) -> torch.Tensor:
    """Fisher/LDA direction ``Σ⁻¹(μ_e − μ_n)`` with a shrunk covariance, per layer.

    ``Σ`` is the pooled within-class covariance (emotional rows centred at ``μ_e``, neutral
    rows at ``μ_n``), shrunk towards a scaled identity:
    ``Σ_s = (1−λ)Σ + λ·(tr Σ / H)·I``. With fewer pairs than hidden units ``Σ`` is singular,
    which is why the shrinkage exists; ``λ = 1`` gives back the mean-difference direction.
    The solve runs in float64.

    The sign is chosen so that ``w·(μ_e − μ_n) > 0`` and the vector is scaled to
    ``‖μ_e − μ_n‖`` of that layer. A layer whose within-class variance is zero falls back to
    the mean difference itself (there is nothing to whiten). ``shrinkage=0`` on a singular
    covariance (fewer pairs than hidden units) is taken as the limit ``λ → 0⁺``.

    Args:
        emotional: ``[n_pairs, num_layers, hidden]`` activations of the emotional texts.
        neutral: Same shape, the neutral text of each pair.
        shrinkage: λ in ``[0, 1]``, or ``None`` for the Ledoit–Wolf estimate of each layer
            (:func:`ledoit_wolf_shrinkage`).

    Returns:
        ``[num_layers, hidden]`` float32, on the input's device.

    Raises:
        ValueError: on mismatched or non-3-D shapes, fewer than 2 pairs, non-finite values,
            or a shrinkage outside ``[0, 1]``.
    """
    _validate(emotional, neutral, min_pairs=2, name="lda_direction")
    if shrinkage is not None and not 0.0 <= float(shrinkage) <= 1.0:
        raise ValueError(f"lda_direction: shrinkage must be in [0, 1] or None, got {shrinkage}")
    centred, delta = _pooled_centred(emotional, neutral)
    m, hidden = centred.shape[1], centred.shape[2]
    if shrinkage is None:
        lams = _ledoit_wolf(centred).tolist()
    else:
        lams = [float(shrinkage)] * centred.shape[0]
    traces = (centred.square().sum(dim=(1, 2)) / m).tolist()
    rows = []
    for layer, (lam, trace) in enumerate(zip(lams, traces, strict=True)):
        if trace <= 0:
            rows.append(delta[layer])
            continue
        rows.append(_solve_shrunk(centred[layer], delta[layer], lam, trace / hidden))
    direction = torch.stack(rows)
    sign = torch.where((direction * delta).sum(dim=-1, keepdim=True) < 0, -1.0, 1.0)
    vector = _rescale(direction * sign, delta)
    return vector.to(emotional.device, torch.float32)


def layer_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between two sets of per-layer vectors.

    Args:
        a: ``[num_layers, hidden]``.
        b: Same shape.

    Returns:
        ``[num_layers]`` float32; 0 at layers where either vector is zero.

    Raises:
        ValueError: if the shapes differ or are not 2-D.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"layer_cosine needs two [num_layers, hidden] tensors of the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    a64, b64 = a.to(torch.float64), b.to(a.device, torch.float64)
    norms = a64.norm(dim=-1) * b64.norm(dim=-1)
    dots = (a64 * b64).sum(dim=-1)
    cos = torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    return cos.clamp(-1.0, 1.0).to(torch.float32)


ESTIMATORS: dict[str, Estimator] = {
    "mean_difference": mean_difference,
    "pca": pca_direction,
    "lda": lda_direction,
}


def estimate(name: str, emotional: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
    """Run the estimator registered under ``name`` (see :data:`ESTIMATORS`).

    Args:
        name: ``"mean_difference"``, ``"pca"`` or ``"lda"``.
        emotional: ``[n_pairs, num_layers, hidden]`` activations of the emotional texts.
        neutral: Same shape, the neutral text of each pair.

    Returns:
        ``[num_layers, hidden]`` float32.

    Raises:
        ValueError: for an unknown name, or invalid activations.
    """
    try:
        estimator = ESTIMATORS[name]
    except KeyError:
        choices = ", ".join(repr(k) for k in ESTIMATORS)
        raise ValueError(f"unknown estimator {name!r}; choose one of {choices}") from None
    return estimator(emotional, neutral)
