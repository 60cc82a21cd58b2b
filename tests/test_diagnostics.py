"""Layer diagnostics on synthetic activations: a direction planted in one layer is found."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from emovec.diagnostics import LayerDiagnostics, diagnose

N, L, H = 200, 6, 32
PLANTED = 3


def _activations(
    planted: int = PLANTED, *, n: int = N, seed: int = 0, sigma: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent noise on both sides; a shift of 3 along a unit u only at ``planted``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(H, generator=g)
    u /= u.norm()
    neutral = sigma * torch.randn(n, L, H, generator=g)
    emotional = sigma * torch.randn(n, L, H, generator=g)
    emotional[:, planted] += 3.0 * u
    return emotional, neutral


@pytest.fixture(scope="module")
def diag() -> LayerDiagnostics:
    return diagnose(
        {"joy": _activations(), "fear": _activations(5, seed=1)},
        token_norms=torch.full((L,), 2.0),
    )


# --- the planted layer ----------------------------------------------------------------


def test_shapes_and_names(diag: LayerDiagnostics) -> None:
    assert diag.emotions == ("joy", "fear")
    assert diag.n_pairs == (N, N)
    assert diag.num_layers == L
    for t in (diag.fisher_ratio, diag.heldout_accuracy, diag.consistency, diag.norm):
        assert t.shape == (2, L)
        assert t.dtype == torch.float32
    assert diag.relative_norm is not None
    torch.testing.assert_close(diag.relative_norm, diag.norm / 2.0)


def test_the_planted_layer_ranks_first(diag: LayerDiagnostics) -> None:
    assert diag.ranking("joy")[0] == PLANTED
    assert diag.ranking("fear")[0] == 5
    assert sorted(diag.ranking("joy")) == list(range(L))


def test_heldout_accuracy_separates_signal_from_noise(diag: LayerDiagnostics) -> None:
    acc = diag.heldout_accuracy[0]
    assert float(acc[PLANTED]) > 0.95
    noise = torch.cat([acc[:PLANTED], acc[PLANTED + 1 :]])
    assert ((noise - 0.5).abs() < 0.2).all(), acc


def test_consistency_and_fisher_ratio(diag: LayerDiagnostics) -> None:
    cons = diag.consistency[0]
    assert float(cons[PLANTED]) > 0.6
    others = torch.cat([cons[:PLANTED], cons[PLANTED + 1 :]])
    # In-sample, so pure noise sits near 1/√n ≈ 0.07 rather than exactly 0.
    assert (others.abs() < 0.15).all(), cons
    fisher = diag.fisher_ratio[0]
    assert float(fisher[PLANTED]) > 10 * float(torch.cat([fisher[:PLANTED], fisher[4:]]).max())
    assert float(diag.norm[0, PLANTED]) == pytest.approx(3.0, rel=0.05)


def test_lda_agrees_with_mean_difference_on_isotropic_noise(diag: LayerDiagnostics) -> None:
    assert float(diag.lda_cosine[0, PLANTED]) > 0.95
    assert ((diag.lda_cosine >= -1) & (diag.lda_cosine <= 1)).all()


def test_score_is_bounded_and_peaks_at_the_planted_layer(diag: LayerDiagnostics) -> None:
    score = diag.score()
    assert score.shape == (2, L)
    assert ((score >= 0) & (score <= 1)).all()
    assert int(score[0].argmax()) == PLANTED
    assert float(score[0, PLANTED]) > 0.5


# --- recommended layers ---------------------------------------------------------------


def test_recommended_single_layer(diag: LayerDiagnostics) -> None:
    assert diag.recommended_layers("joy", depth=(0.0, 1.0), width=1) == [PLANTED]
    assert diag.recommended_layers("fear", depth=(0.0, 1.0), width=1) == [5]


def test_depth_restriction_is_honoured(diag: LayerDiagnostics) -> None:
    # Default depth (0.2, 0.75) of 6 layers allows layers 1..4: fear's best layer 5 is out.
    band = diag.recommended_layers("fear", width=1)
    assert band != [5]
    assert 1 <= band[0] <= 4
    # Joy's planted layer 3 is outside [0, 3).
    band = diag.recommended_layers("joy", depth=(0.0, 0.5), width=1)
    assert band[0] in (0, 1, 2)
    # Over both emotions, the default band keeps joy's layer.
    assert diag.recommended_layers(width=1) == [PLANTED]


def test_window_width_and_fallbacks(diag: LayerDiagnostics) -> None:
    band = diag.recommended_layers("joy", depth=(0.0, 1.0), width=2)
    assert len(band) == 2 and PLANTED in band
    assert band == list(range(band[0], band[0] + 2))
    # Default width: max(1, round(6 / 6)) = 1.
    assert diag.recommended_layers("joy", depth=(0.0, 1.0)) == [PLANTED]
    # Width 5 does not fit in layers 1..4: the whole stack is searched instead.
    band = diag.recommended_layers("joy", width=5)
    assert len(band) == 5 and PLANTED in band
    assert diag.recommended_layers("joy", width=L + 3) == list(range(L))


def test_the_shallowest_saturated_band_is_recommended() -> None:
    """Separability that forms at layer 2 and creeps up afterwards: the band starts where it
    has formed, not where it peaks; saturation=1 picks the peak."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(H, generator=g)
    u /= u.norm()
    neutral = 0.3 * torch.randn(N, L, H, generator=g)
    emotional = 0.3 * torch.randn(N, L, H, generator=g)
    for layer, shift in enumerate([0.0, 0.0, 2.0, 2.1, 2.2, 2.3]):
        emotional[:, layer] += shift * u
    creeping = diagnose({"joy": (emotional, neutral)})
    scores = creeping.score()[0]
    assert int(scores.argmax()) == 5 and 0.9 <= float(scores[2] / scores[5]) < 0.95
    assert creeping.recommended_layers(depth=(0.0, 1.0), width=1, saturation=0.9) == [2]
    first = next(i for i in range(L) if scores[i] >= 0.95 * scores[5])
    assert first < 5 and creeping.recommended_layers(depth=(0.0, 1.0), width=1) == [first]
    assert creeping.recommended_layers(depth=(0.0, 1.0), width=1, saturation=1.0) == [5]
    with pytest.raises(ValueError, match="saturation"):
        creeping.recommended_layers(saturation=0.0)


def test_bad_arguments_to_recommended_layers(diag: LayerDiagnostics) -> None:
    with pytest.raises(ValueError, match="depth"):
        diag.recommended_layers(depth=(0.8, 0.2))
    with pytest.raises(ValueError, match="width"):
        diag.recommended_layers(width=0)
    with pytest.raises(ValueError, match="unknown emotion 'anger'"):
        diag.ranking("anger")


# --- exports --------------------------------------------------------------------------


def test_to_dict_roundtrips_through_strict_json(diag: LayerDiagnostics) -> None:
    data = diag.to_dict()
    restored = json.loads(json.dumps(data, allow_nan=False))
    assert restored == data
    assert restored["num_layers"] == L
    assert restored["recommended_layers"] == [PLANTED]
    joy = restored["per_emotion"]["joy"]
    assert joy["ranking"][0] == PLANTED
    assert len(joy["heldout_accuracy"]) == L
    assert joy["heldout_accuracy"][PLANTED] == pytest.approx(
        float(diag.heldout_accuracy[0, PLANTED])
    )
    assert joy["recommended_layers"] == diag.recommended_layers("joy")


def test_to_markdown(diag: LayerDiagnostics) -> None:
    text = diag.to_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "layer" not in line]
    assert len(rows) == L
    assert "| joy | fear |" in text
    assert rows[PLANTED].startswith(f"| {PLANTED}* |")
    assert "Recommended layers (all emotions): 3" in text


def test_plot_writes_a_png(diag: LayerDiagnostics, tmp_path: Path) -> None:
    target = tmp_path / "plots" / "diag.png"
    written = diag.plot(target)
    assert written == target
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 1000
    assert [p.name for p in target.parent.iterdir()] == ["diag.png"]  # no staging file left


def test_plot_without_matplotlib_says_what_to_install(
    diag: LayerDiagnostics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"emovec\[eval\]"):
        diag.plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --- folds, seeds and small inputs ----------------------------------------------------


def test_folds_are_deterministic_per_seed() -> None:
    emotional, neutral = _activations(sigma=3.0)  # noisy enough that folds matter
    a = diagnose({"joy": (emotional, neutral)}, seed=7)
    b = diagnose({"joy": (emotional, neutral)}, seed=7)
    c = diagnose({"joy": (emotional, neutral)}, seed=8, folds=3)
    assert torch.equal(a.heldout_accuracy, b.heldout_accuracy)
    assert not torch.equal(a.heldout_accuracy, c.heldout_accuracy)
    assert a.relative_norm is None


def test_few_pairs_use_leave_one_out_and_one_pair_is_nan() -> None:
    emotional, neutral = _activations(n=3)
    few = diagnose({"joy": (emotional, neutral)}, folds=10)
    # 3 pairs, 3 folds: the accuracy is a multiple of 1/3.
    thirds = few.heldout_accuracy * 3
    assert torch.allclose(thirds, thirds.round(), atol=1e-5)
    assert float(few.heldout_accuracy[0, PLANTED]) == 1.0

    one = diagnose({"joy": (emotional[:1], neutral[:1]), "fear": (emotional, neutral)})
    assert one.n_pairs == (1, 3)
    assert torch.isnan(one.heldout_accuracy[0]).all()
    assert torch.isnan(one.lda_cosine[0]).all()
    assert torch.equal(one.score()[0], torch.zeros(L))
    data = one.to_dict()
    assert data["per_emotion"]["joy"]["heldout_accuracy"] == [None] * L
    json.dumps(data, allow_nan=False)
    assert "n/a" in one.to_markdown()


def test_zero_difference_scores_chance_not_nan() -> None:
    x = torch.randn(10, L, H, generator=torch.Generator().manual_seed(3))
    diag = diagnose({"joy": (x, x.clone())})
    torch.testing.assert_close(diag.heldout_accuracy, torch.full((1, L), 0.5))
    assert torch.equal(diag.consistency, torch.zeros(1, L))
    assert torch.equal(diag.fisher_ratio, torch.zeros(1, L))
    assert torch.equal(diag.score(), torch.zeros(1, L))


# --- validation -----------------------------------------------------------------------


def test_invalid_input_is_rejected() -> None:
    emotional, neutral = _activations(n=4)
    with pytest.raises(ValueError, match="at least one emotion"):
        diagnose({})
    with pytest.raises(ValueError, match="joy"):
        diagnose({"joy": (emotional, neutral[:3])})
    with pytest.raises(ValueError, match="joy"):
        diagnose({"joy": (emotional[:, 0], neutral[:, 0])})
    with pytest.raises(ValueError, match="no pairs"):
        diagnose({"joy": (emotional[:0], neutral[:0])})
    with pytest.raises(ValueError, match="other emotions"):
        diagnose({"joy": (emotional, neutral), "fear": (emotional[:, :4], neutral[:, :4])})
    bad = emotional.clone()
    bad[0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="infinite"):
        diagnose({"joy": (bad, neutral)})
    with pytest.raises(ValueError, match="token_norms"):
        diagnose({"joy": (emotional, neutral)}, token_norms=torch.ones(L + 1))
    with pytest.raises(ValueError, match="token_norms"):
        diagnose({"joy": (emotional, neutral)}, token_norms=torch.zeros(L))
    with pytest.raises(ValueError, match="folds"):
        diagnose({"joy": (emotional, neutral)}, folds=1)


def test_dataclass_rejects_mismatched_fields() -> None:
    t = torch.zeros(1, L)
    with pytest.raises(ValueError, match="consistency"):
        LayerDiagnostics(
            emotions=("joy",),
            fisher_ratio=t,
            heldout_accuracy=t,
            consistency=torch.zeros(1, L + 1),
            norm=t,
            relative_norm=None,
            lda_cosine=t,
            n_pairs=(2,),
            folds=5,
        )
