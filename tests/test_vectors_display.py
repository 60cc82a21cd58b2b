"""EmotionVectors.similarity() and the bank's notebook display (_repr_html_)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_model, random_bank
from matplotlib.figure import Figure

from emovec import EmotionVectors, Placement, steer

NORMS = torch.ones(4)


def _bank(vectors: dict[str, torch.Tensor], **options: object) -> EmotionVectors:
    return EmotionVectors(vectors, NORMS, model_name="tiny", **options)  # type: ignore[arg-type]


def test_equal_emotions_are_one_orthogonal_zero_opposite_minus_one() -> None:
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    other = torch.zeros(4, 8)
    other[:, 0] = 1.0
    base[:, 0] = 0.0  # orthogonal to ``other`` at every layer
    bank = _bank({"joy": base, "glee": 3 * base, "anger": other, "calm": -base})
    result = bank.similarity()
    assert result.emotions == ("joy", "glee", "anger", "calm")
    assert result.layers == (0, 1, 2, 3)  # no recommended band: every layer
    assert result["joy", "glee"] == pytest.approx(1.0)
    assert result["joy", "anger"] == pytest.approx(0.0, abs=1e-6)
    assert result["joy", "calm"] == pytest.approx(-1.0)
    torch.testing.assert_close(result.matrix, result.matrix.T)
    torch.testing.assert_close(result.matrix.diagonal(), torch.ones(4))
    with pytest.raises(KeyError, match="Unknown emotion"):
        result["joy", "fear"]


def test_each_layer_of_the_band_counts_the_same() -> None:
    # Layer 0: the same direction (cosine 1); layer 1: orthogonal (cosine 0), and ten times
    # longer, so concatenating the rows would give about 0.01 instead of the mean 0.5.
    joy, anger = torch.zeros(4, 8), torch.zeros(4, 8)
    joy[:, 0] = anger[0, 0] = 1.0
    joy[1] *= 10
    anger[1:, 1] = 10.0
    bank = _bank({"joy": joy, "anger": anger}, recommended_layers=[0, 1])
    assert bank.similarity()["joy", "anger"] == pytest.approx(0.5)  # the recommended band
    assert bank.similarity(layers=[0])["joy", "anger"] == pytest.approx(1.0)
    assert bank.similarity(layers=[1, 2, 3]).layers == (1, 2, 3)
    assert bank.similarity(layers=[1, 2, 3])["joy", "anger"] == pytest.approx(0.0)


def test_zero_vectors_have_no_similarity_and_bad_layers_are_refused() -> None:
    joy = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    zero_at_2 = joy.clone()
    zero_at_2[2] = 0.0
    bank = _bank({"joy": joy, "half": zero_at_2, "none": torch.zeros(4, 8)})
    result = bank.similarity()
    assert result["joy", "half"] == pytest.approx(1.0)  # layer 2 left out of the mean
    assert math.isnan(result["joy", "none"])
    with pytest.raises(ValueError, match=r"indices in 0\.\.3"):
        bank.similarity(layers=[4])
    with pytest.raises(ValueError, match=r"indices in 0\.\.3"):
        bank.similarity(layers=[])
    with pytest.raises(TypeError, match="integers"):
        bank.similarity(layers=["1"])  # type: ignore[list-item]


def test_the_matrix_renders_as_markdown_and_a_figure() -> None:
    result = random_bank(6, 8, layers=[2, 3, 4]).similarity()
    table = result.to_markdown().splitlines()
    assert table[0] == "| 2–4 | joy | anger | fear |"
    assert table[2].startswith("| joy | 1.00 | ")
    figure = result.plot()
    assert isinstance(figure, Figure)
    assert "2–4" in figure.axes[0].get_title()


def test_the_notebook_display_shows_placements_and_escapes_text() -> None:
    vectors = {"<b>joy</b>": torch.ones(4, 8), "fear & dread": -torch.ones(4, 8)}
    placement = Placement((1, 2), 0.75, instruction='Sound "<delighted>".')
    bank = EmotionVectors(
        vectors,
        NORMS * 3,
        model_name="org/<model>",
        recommended_layers=[2, 3],
        placements={"<b>joy</b>": placement},
    )
    shown = bank._repr_html_()
    assert "&lt;b&gt;joy&lt;/b&gt;" in shown and "<b>joy</b>" not in shown
    assert "fear &amp; dread" in shown and "org/&lt;model&gt;" in shown
    assert "Sound &quot;&lt;delighted&gt;&quot;." in shown
    assert "<td>1–2</td><td>0.75</td>" in shown
    assert "<td>band 2–3</td><td>default</td>" in shown
    assert "2 emotions, 4 layers × 8 hidden" in shown
    assert "persona" not in shown  # no emotion has one
    with_persona = bank.with_placements({"fear & dread": Placement((0,), 1.0, persona="<p>")})
    assert "<th>persona</th>" in with_persona._repr_html_()
    assert "&lt;p&gt;" in with_persona._repr_html_()


def test_a_steering_shows_its_layers_method_and_dose() -> None:
    model = build_model("llama")
    steering = steer(model, random_bank(3, 32, layers=[1, 2]), joy=1.0)
    shown = steering._repr_html_()
    assert "not applied" in shown and "layers [1, 2], add, positions" in shown
    assert f"dose {steering.dose[0]:.3g}" in shown
    with steering:
        assert "(applied)" in steering._repr_html_()
