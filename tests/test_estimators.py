"""Direction estimators: planted directions, sign and scale conventions, shrinkage, errors."""

from __future__ import annotations

import pytest
import torch

from emovec.estimators import (
    ESTIMATORS,
    Estimator,
    estimate,
    layer_cosine,
    lda_direction,
    ledoit_wolf_shrinkage,
    mean_difference,
    pca_direction,
)

N, L, H = 200, 3, 32


def _unit(h: int, g: torch.Generator) -> torch.Tensor:
    u = torch.randn(h, generator=g)
    return u / u.norm()


def _planted(
    seed: int = 0, *, n: int = N, sigma: float = 0.3, amplitude: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """neutral = σ·noise, emotional = σ·noise' + amplitude·u at every layer; returns u too."""
    g = torch.Generator().manual_seed(seed)
    u = _unit(H, g)
    neutral = sigma * torch.randn(n, L, H, generator=g)
    emotional = sigma * torch.randn(n, L, H, generator=g) + amplitude * u
    return emotional, neutral, u


def _anisotropic(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise with variance 101 along a = (e0 + e1)/√2, a shift 3·e0; returns Σ⁻¹δ too.

    The big-variance axis is correlated with the shift, so the mean difference (≈ e0) is
    far from the Fisher direction Σ⁻¹δ ∝ 51·e0 − 50·e1 (cosine ≈ 0.71).
    """
    g = torch.Generator().manual_seed(seed)
    n, h = 2000, 16
    u = torch.zeros(h)
    u[0] = 1.0
    a = torch.zeros(h)
    a[0] = a[1] = 2**-0.5

    def noise() -> torch.Tensor:
        return torch.randn(n, 1, h, generator=g) + 10.0 * torch.randn(n, 1, 1, generator=g) * a

    emotional, neutral = noise() + 3.0 * u, noise()
    sigma = torch.eye(h) + 100.0 * torch.outer(a, a)
    fisher = torch.linalg.solve(sigma, 3.0 * u)
    return emotional, neutral, fisher.unsqueeze(0)


# --- planted directions ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_recover_a_planted_direction(name: str) -> None:
    emotional, neutral, u = _planted()
    vector = estimate(name, emotional, neutral)
    assert vector.shape == (L, H)
    assert vector.dtype == torch.float32
    cos = layer_cosine(vector, u.expand(L, H))
    assert (cos > 0.99).all(), cos


def test_mean_difference_is_the_mean_of_differences() -> None:
    emotional = torch.tensor([[[1.0, 2.0]], [[3.0, 6.0]]])
    neutral = torch.tensor([[[0.0, 1.0]], [[1.0, 1.0]]])
    torch.testing.assert_close(mean_difference(emotional, neutral), torch.tensor([[1.5, 3.0]]))


def test_lda_beats_mean_difference_under_anisotropic_noise() -> None:
    emotional, neutral, fisher = _anisotropic()
    lda_cos = float(layer_cosine(lda_direction(emotional, neutral), fisher)[0])
    mean_cos = float(layer_cosine(mean_difference(emotional, neutral), fisher)[0])
    assert lda_cos > 0.99
    assert mean_cos < 0.8  # the construction really separates the two
    assert lda_cos > mean_cos


def test_lda_matches_mean_difference_under_isotropic_noise() -> None:
    g = torch.Generator().manual_seed(3)
    u = _unit(H, g)
    n = 1000
    emotional = torch.randn(n, L, H, generator=g) + 3.0 * u
    neutral = torch.randn(n, L, H, generator=g)
    cos = layer_cosine(lda_direction(emotional, neutral), mean_difference(emotional, neutral))
    assert (cos > 0.99).all(), cos


def test_full_shrinkage_gives_exactly_the_mean_difference() -> None:
    emotional, neutral, _ = _anisotropic()
    lda = lda_direction(emotional, neutral, shrinkage=1.0)
    mean = mean_difference(emotional, neutral)
    torch.testing.assert_close(lda, mean, rtol=1e-5, atol=1e-6)


def test_unshrunk_lda_recovers_the_fisher_direction_with_many_pairs() -> None:
    emotional, neutral, fisher = _anisotropic()
    unshrunk = lda_direction(emotional, neutral, shrinkage=0.0)
    assert float(layer_cosine(unshrunk, fisher)[0]) > 0.99


# --- sign and scale conventions -------------------------------------------------------


def test_pca_sign_follows_the_emotional_side() -> None:
    emotional, neutral, _ = _planted(seed=1)
    forward = pca_direction(emotional, neutral)
    backward = pca_direction(neutral, emotional)
    torch.testing.assert_close(backward, -forward, rtol=1e-4, atol=1e-5)
    diff = emotional - neutral
    projections = torch.einsum("nlh,lh->nl", diff, forward)
    assert (projections.mean(dim=0) > 0).all()


def test_pca_is_uncentred() -> None:
    # Pairs vary a lot along e1 but all share a shift along e0: centring would pick e1.
    g = torch.Generator().manual_seed(2)
    n = 100
    neutral = torch.zeros(n, 1, 4)
    emotional = torch.zeros(n, 1, 4)
    emotional[:, 0, 0] = 5.0
    emotional[:, 0, 1] = 2.0 * torch.randn(n, generator=g)
    vector = pca_direction(emotional, neutral)
    assert float(layer_cosine(vector, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))[0]) > 0.95


def test_lda_sign_follows_the_emotional_side() -> None:
    emotional, neutral, _ = _anisotropic()
    forward = lda_direction(emotional, neutral)
    backward = lda_direction(neutral, emotional)
    torch.testing.assert_close(backward, -forward, rtol=1e-4, atol=1e-5)
    delta = mean_difference(emotional, neutral)
    assert float((forward * delta).sum()) > 0


@pytest.mark.parametrize("estimator", [pca_direction, lda_direction])
def test_vectors_have_the_mean_difference_norm(estimator: Estimator) -> None:
    emotional, neutral, _ = _planted(seed=4)
    # A different shift size per layer, so a single global scale would not pass.
    emotional = emotional * torch.tensor([1.0, 2.0, 5.0]).view(1, L, 1)
    vector = estimator(emotional, neutral)
    expected = mean_difference(emotional, neutral).norm(dim=-1)
    torch.testing.assert_close(vector.norm(dim=-1), expected, rtol=1e-5, atol=1e-6)


# --- shrinkage and degenerate data ----------------------------------------------------


def test_ledoit_wolf_is_in_unit_interval_and_tracks_the_target() -> None:
    emotional, neutral, _ = _anisotropic()
    aniso = ledoit_wolf_shrinkage(emotional, neutral)
    g = torch.Generator().manual_seed(5)
    iso = ledoit_wolf_shrinkage(
        torch.randn(40, 2, 64, generator=g), torch.randn(40, 2, 64, generator=g)
    )
    for lam in (aniso, iso):
        assert ((lam >= 0) & (lam <= 1)).all(), lam
    # Far from a scaled identity with many samples → little shrinkage; isotropic noise with
    # few samples → a lot.
    assert float(aniso.max()) < 0.1
    assert float(iso.min()) > 0.5


def test_fewer_pairs_than_hidden_units() -> None:
    g = torch.Generator().manual_seed(6)
    u = _unit(256, g)
    emotional = torch.randn(8, 2, 256, generator=g) + 12.0 * u
    neutral = torch.randn(8, 2, 256, generator=g)
    for shrinkage in (None, 0.0, 0.3):
        vector = lda_direction(emotional, neutral, shrinkage=shrinkage)
        assert torch.isfinite(vector).all()
        assert (layer_cosine(vector, u.expand(2, 256)) > 0.5).all()
    # λ = 0 on the singular scatter is the limit λ → 0⁺, not a jump to something else.
    limit = layer_cosine(
        lda_direction(emotional, neutral, shrinkage=0.0),
        lda_direction(emotional, neutral, shrinkage=1e-5),
    )
    assert (limit > 0.9999).all(), limit
    assert torch.isfinite(pca_direction(emotional, neutral)).all()
    lam = ledoit_wolf_shrinkage(emotional, neutral)
    assert ((lam >= 0) & (lam <= 1)).all()


def test_zero_variance_data_gives_the_mean_difference() -> None:
    neutral = torch.zeros(4, 2, 8)
    emotional = torch.ones(4, 2, 8)
    assert torch.equal(ledoit_wolf_shrinkage(emotional, neutral), torch.ones(2))
    for estimator in ESTIMATORS.values():
        vector = estimator(emotional, neutral)
        torch.testing.assert_close(vector, torch.ones(2, 8))


def test_zero_difference_gives_zero_vectors() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 2, 8, generator=g)
    for estimator in ESTIMATORS.values():
        vector = estimator(x, x.clone())
        assert torch.equal(vector, torch.zeros(2, 8))


# --- layer_cosine ---------------------------------------------------------------------


def test_layer_cosine() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    torch.testing.assert_close(layer_cosine(a, b), torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="same shape"):
        layer_cosine(a, b[:2])


# --- validation -----------------------------------------------------------------------


def test_unknown_estimator_lists_the_choices() -> None:
    emotional, neutral, _ = _planted(n=4)
    with pytest.raises(ValueError, match="'mean_difference', 'pca', 'lda'"):
        estimate("ica", emotional, neutral)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_invalid_inputs_are_rejected(name: str) -> None:
    emotional, neutral, _ = _planted(n=4)
    with pytest.raises(ValueError, match="differ in shape"):
        estimate(name, emotional, neutral[:3])
    with pytest.raises(ValueError, match=r"\[n_pairs, num_layers, hidden\]"):
        estimate(name, emotional[:, 0], neutral[:, 0])
    with pytest.raises(ValueError, match="at least"):
        estimate(name, emotional[:0], neutral[:0])
    bad = emotional.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        estimate(name, bad, neutral)


@pytest.mark.parametrize("estimator", [pca_direction, lda_direction])
def test_pca_and_lda_need_two_pairs(estimator: Estimator) -> None:
    emotional, neutral, _ = _planted(n=1)
    with pytest.raises(ValueError, match="at least 2 pair"):
        estimator(emotional, neutral)
    # The mean difference is defined for one pair.
    torch.testing.assert_close(mean_difference(emotional, neutral), (emotional - neutral)[0])


def test_shrinkage_out_of_range_is_rejected() -> None:
    emotional, neutral, _ = _planted(n=4)
    with pytest.raises(ValueError, match="shrinkage"):
        lda_direction(emotional, neutral, shrinkage=1.5)
