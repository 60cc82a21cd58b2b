"""find_blocks: locating the decoder block stack of every supported architecture."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import ALL_ARCHS, build_model, decoder_blocks, text_num_layers
from torch import nn

from emovec import BlockDiscoveryError, find_blocks
from emovec.layers import band_width, default_layer_band, hidden_size_of, num_layers_of


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_find_layers_returns_the_decoder_blocks(arch: str) -> None:
    model = build_model(arch)
    expected = decoder_blocks(model, arch)
    found = find_blocks(model)
    assert len(found) == text_num_layers(model) == len(expected)
    assert all(f is e for f, e in zip(found, expected, strict=True))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gemma3_multimodal"])
def test_find_layers_follows_the_configured_depth(arch: str) -> None:
    model = build_model(arch, num_layers=4)
    found = find_blocks(model)
    assert len(found) == 4 == text_num_layers(model)
    assert all(f is e for f, e in zip(found, decoder_blocks(model, arch), strict=True))


def _vision_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The vision tower's blocks and their dotted path, wherever this transformers release
    keeps them: 4.52 nested the towers under ``.model``, 5.0 dropped SigLIP's
    ``.vision_model`` wrapper."""
    for path in (
        "model.vision_tower.encoder.layers",
        "model.vision_tower.vision_model.encoder.layers",
        "vision_tower.vision_model.encoder.layers",
    ):
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        assert isinstance(layers, nn.ModuleList)
        return path, layers
    raise AssertionError("no vision tower found")


def test_multimodal_gemma3_picks_the_language_stack_not_the_vision_tower() -> None:
    model = build_model("gemma3_multimodal")
    _, vision = _vision_layers(model)
    language = decoder_blocks(model, "gemma3_multimodal")
    # The fixture makes the vision tower as deep as, and heavier than, the text stack.
    assert len(vision) == len(language)
    assert sum(p.numel() for p in vision.parameters()) > sum(
        p.numel() for p in language.parameters()
    )
    found = find_blocks(model)
    assert found[0] is language[0]
    assert not any(f is v for f in found for v in vision)
    assert num_layers_of(model) == model.config.text_config.num_hidden_layers
    assert hidden_size_of(model) == model.config.text_config.hidden_size


def test_override_by_dotted_path() -> None:
    model = build_model("llama")
    assert find_blocks(model, "model.layers") == list(model.model.layers)
    assert find_blocks(build_model("gpt2"), "transformer.h")[0].__class__.__name__ == "GPT2Block"
    # The override wins over discovery, even for a list that is not the decoder stack.
    multimodal = build_model("gemma3_multimodal")
    path, vision = _vision_layers(multimodal)
    found = find_blocks(multimodal, path)
    assert len(found) == len(vision) and all(f is v for f, v in zip(found, vision, strict=True))


def test_override_by_module_list() -> None:
    model = build_model("llama")
    chosen = [model.model.layers[2], model.model.layers[0]]
    found = find_blocks(model, chosen)
    assert len(found) == 2
    assert found[0] is chosen[0] and found[1] is chosen[1]
    assert find_blocks(model, model.model.layers) == list(model.model.layers)


def test_override_with_a_missing_path_raises() -> None:
    model = build_model("llama")
    with pytest.raises(BlockDiscoveryError, match=r"model\.blocks"):
        find_blocks(model, "model.blocks")


def test_override_with_an_empty_list_raises() -> None:
    model = build_model("llama")
    with pytest.raises(BlockDiscoveryError):
        find_blocks(model, [])


def test_override_with_a_path_to_a_single_non_list_module_raises_discovery_error() -> None:
    # find_blocks documents BlockDiscoveryError for layers it cannot identify; a path naming
    # one module that is not a block list (here the final norm) must not escape as TypeError.
    model = build_model("llama")
    with pytest.raises(BlockDiscoveryError):
        find_blocks(model, "model.norm")


class _NoStack(nn.Module):
    """A model with a config but no ModuleList of decoder blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=2, hidden_size=8)
        self.embed = nn.Embedding(10, 8)
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(self.embed(input_ids)))


def test_model_without_a_block_stack_raises_a_helpful_error() -> None:
    with pytest.raises(BlockDiscoveryError) as info:
        find_blocks(_NoStack())
    message = str(info.value)
    assert "_NoStack" in message
    assert "ModuleList" in message and "2 identical blocks" in message
    assert "blocks=" in message


def test_stack_of_the_wrong_depth_is_not_taken() -> None:
    model = _NoStack()
    model.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])  # config says 2
    with pytest.raises(BlockDiscoveryError):
        find_blocks(model)
    model.config.num_hidden_layers = 3
    assert find_blocks(model) == list(model.blocks)


def test_no_stack_error_is_a_lookup_error_and_override_rescues_it() -> None:
    model = _NoStack()
    with pytest.raises(LookupError):
        find_blocks(model)
    assert find_blocks(model, [model.first, model.second]) == [model.first, model.second]


@pytest.mark.parametrize(
    ("num_layers", "width"), [(1, 1), (3, 1), (6, 1), (9, 2), (15, 3), (18, 3), (30, 5)]
)
def test_band_width_is_a_sixth_rounded_half_up(num_layers: int, width: int) -> None:
    # One rule for extraction's default band, calibration's candidates and diagnostics:
    # 15 layers give 3 (Python's round(2.5) would give 2).
    assert band_width(num_layers) == width
    band = default_layer_band(num_layers)
    assert len(band) == min(width, num_layers - band[0])
