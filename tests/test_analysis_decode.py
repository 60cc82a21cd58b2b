"""EmotionDecode (emovec.analysis.decode): the logit lens of directions, on tiny models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import (
    VOCAB,
    another_thread_meanwhile,
    build_model,
    build_tokenizer,
    capture_outputs,
    decoder_blocks,
    random_bank,
)
from matplotlib.figure import Figure
from torch import nn

from emovec import EmotionVectors
from emovec.analysis._decode_cli import add_decode_parser, main_decode
from emovec.analysis._lens import find_lens
from emovec.analysis.decode import (
    DecodedLayer,
    DecodedToken,
    Decoding,
    LensError,
    decode,
    stimulus_meta_vector,
)

ARCHS = ["llama", "gpt2", "qwen2", "gemma", "gpt_neox", "falcon", "gemma3_multimodal"]
# Where each architecture keeps its final norm (known paths, to check the structural search).
NORM_PATH = {
    "llama": "model.norm",
    "qwen2": "model.norm",
    "gemma": "model.norm",
    "gpt2": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
    "falcon": "transformer.ln_f",
    # transformers 5.x nests the text model under model.language_model, 4.5x under
    # language_model.model.
    "gemma3_multimodal": "model.language_model.norm|language_model.model.norm",
}
HAPPY, RAGE = VOCAB["happy"], VOCAB["rage"]


def _module(model: nn.Module, paths: str) -> nn.Module:
    """The module at the first of the ``|``-separated dotted paths that exists."""
    for path in paths.split("|"):
        module: object = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.Module):
            return module
    raise AttributeError(f"None of {paths} is a module of {type(model).__name__}.")


def _unembedding(model: nn.Module) -> torch.Tensor:
    return model.get_output_embeddings().weight.detach()


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_lens_finds_the_final_norm(arch: str) -> None:
    model = build_model(arch)
    lens = find_lens(model)
    assert lens.norm is _module(model, NORM_PATH[arch])
    assert lens.head is model.get_output_embeddings()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", [False, True])
def test_an_unembedding_row_decodes_to_its_token_first(
    arch: str, norm: bool, tokenizer: object
) -> None:
    model = build_model(arch)
    row = _unembedding(model)[HAPPY]
    layers = len(decoder_blocks(model, arch))
    result = decode(model, tokenizer, row.repeat(layers, 1), k=5, norm=norm)
    assert result.layers == list(range(layers))
    for layer in result.rows:
        assert layer.tokens[0].id == HAPPY
        assert layer.tokens[0].token == "happy"
        logits = [t.logit for t in layer.tokens]
        assert logits == sorted(logits, reverse=True) and len(logits) == 5
    flat = decode(model, tokenizer, row, k=3, norm=norm)
    assert flat.layers == [None] and flat.top() == result.top(layers - 1)[:3]


@pytest.mark.parametrize("arch", ARCHS)
def test_decoding_goes_through_the_final_norm(arch: str, tokenizer: object) -> None:
    model = build_model(arch)
    final = _module(model, NORM_PATH[arch])
    with torch.no_grad():  # give the norm gains that change the reading
        final.weight.copy_(
            torch.rand(final.weight.shape, generator=torch.Generator().manual_seed(1)) * 3
        )
    blocks = len(decoder_blocks(model, arch))
    generator = torch.Generator().manual_seed(2)
    rows = torch.randn(blocks, _unembedding(model).shape[1], generator=generator)
    got = decode(model, tokenizer, rows, layers=[0], k=8)
    with torch.no_grad():
        expected = model.get_output_embeddings()(final(rows[:1]))[0].topk(8)
    assert [t.id for t in got.rows[0].tokens] == expected.indices.tolist()
    assert [t.logit for t in got.rows[0].tokens] == pytest.approx(
        expected.values.tolist(), abs=1e-4
    )
    plain = decode(model, tokenizer, rows, layers=[0], k=8, norm=False)
    assert plain.rows[0].tokens != got.rows[0].tokens


def test_a_bank_direction_is_read_at_each_layer_and_labelled(tokenizer: object) -> None:
    model = build_model("llama")
    unembedding = _unembedding(model)
    happy, rage = unembedding[HAPPY], unembedding[RAGE]
    # joy reads "happy" at layer 0 and "rage" at layers 1 and 2; anger the other way round.
    joy = torch.stack([happy, rage, rage]) * 0.1
    anger = torch.stack([rage, happy, happy]) * 0.1
    bank = EmotionVectors(
        {"joy": joy, "anger": anger}, torch.tensor([1.0, 2.0, 3.0]), model_name="tiny"
    )
    result = decode(model, tokenizer, bank["joy"], layers=[2, 0], k=2)
    assert result.label == "joy" and result.layers == [0, 2]
    assert result.top(0)[0] == "happy" and result.top(2)[0] == "rage"
    with pytest.raises(KeyError, match="not decoded"):
        result.top(1)
    mix = decode(model, tokenizer, 0.5 * bank["joy"] - 0.25 * bank["anger"], norm=False, k=4)
    assert mix.label == "0.5*joy - 0.25*anger"
    # In the bank's relative units each emotion's row has the layer's hidden norm (1 at 0).
    row = 0.5 * happy / happy.norm() - 0.25 * rage / rage.norm()
    expected = (unembedding @ row).topk(4)
    assert [t.id for t in mix.rows[0].tokens] == expected.indices.tolist()
    assert [t.logit for t in mix.rows[0].tokens] == pytest.approx(expected.values.tolist())
    # ... at layer 2 (hidden norm 3), anger's "happy" row is three times as long.
    at_two = (unembedding @ (1.5 * rage / rage.norm() - 0.75 * happy / happy.norm())).topk(4)
    assert [t.logit for t in mix.rows[2].tokens] == pytest.approx(at_two.values.tolist())


def test_bad_directions_are_refused_with_what_to_do(tokenizer: object) -> None:
    model = build_model("llama")
    rows = torch.randn(3, 32)
    with pytest.raises(ValueError, match="3 decoder blocks"):
        decode(model, tokenizer, torch.randn(4, 32))
    with pytest.raises(ValueError, match="hidden size 16"):
        decode(model, tokenizer, torch.randn(3, 16))
    with pytest.raises(ValueError, match=r"indices in 0\.\.2"):
        decode(model, tokenizer, rows, layers=[3])
    with pytest.raises(TypeError, match="integers"):
        decode(model, tokenizer, rows, layers=[1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no layers"):
        decode(model, tokenizer, rows[0], layers=[0])
    with pytest.raises(ValueError, match="zero at layers \\[1\\]"):
        decode(model, tokenizer, torch.stack([rows[0], torch.zeros(32), rows[2]]))
    with pytest.raises(ValueError, match="k must be"):
        decode(model, tokenizer, rows, k=0)
    with pytest.raises(ValueError, match="non-finite"):
        decode(model, tokenizer, torch.full((3, 32), float("nan")))
    with pytest.raises(ValueError, match=r"\[hidden\] or \[num_layers, hidden\]"):
        decode(model, tokenizer, torch.randn(2, 3, 32))
    bank = random_bank(3, 32)
    with pytest.raises(TypeError, match=r"vecs\[emotion\]"):
        decode(model, tokenizer, bank)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is zero"):
        decode(model, tokenizer, 0 * bank["joy"])


def test_a_model_without_a_single_final_norm_says_so(tokenizer: object) -> None:
    # OPT with a projection after its final norm: no one module maps block output to head input.
    model = build_model("opt", word_embed_proj_dim=16)
    with pytest.raises(LensError, match="norm=False"):
        decode(model, tokenizer, torch.randn(3, 32))
    base = build_model("llama").model  # a bare decoder: no LM head
    with pytest.raises(LensError, match="no LM head"):
        decode(base, tokenizer, torch.randn(3, 32))


def test_results_render_as_markdown_json_and_a_figure(tokenizer: object) -> None:
    model = build_model("llama")
    result = decode(model, tokenizer, _unembedding(model)[HAPPY].repeat(3, 1), k=3)
    table = result.to_markdown(logits=True)
    assert table.splitlines()[2].startswith("| 0 | happy (")
    assert len(table.splitlines()) == 2 + 3
    assert json.loads(json.dumps(result.to_dict()))["layers"][1]["tokens"][0]["id"] == HAPPY
    figure = result.plot()
    assert isinstance(figure, Figure) and len(figure.axes) == 2  # grid and colour bar
    odd = Decoding("<joy>", (DecodedLayer(3, (DecodedToken(" a|<b>\n", 7, 1.0),)),), True)
    assert odd.to_markdown().splitlines() == [
        "| &lt;joy&gt; layer | top tokens |",
        "|---:|---|",
        "| 3 | a\\|&lt;b&gt; |",
    ]
    blank = Decoding("x", (DecodedLayer(None, (DecodedToken("\n", 7, 1.0),)),), True)
    assert blank.to_markdown().splitlines()[2] == "| - | '\\n' |"


def test_the_meta_vector_is_the_mean_reading_of_the_texts(tokenizer: object) -> None:
    model = build_model("llama")
    texts = ["i was happy today", "the dog ran in the park and then we went home"]
    meta = stimulus_meta_vector(model, tokenizer, texts, batch_size=1)
    blocks = list(decoder_blocks(model, "llama"))
    expected = torch.zeros(3, 32)
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with capture_outputs(blocks) as seen, torch.no_grad():
            model(input_ids=ids)
        for layer in range(3):
            expected[layer] += seen[layer][0, 1:].mean(dim=0) / len(texts)  # never position 0
    assert meta.shape == (3, 32)
    torch.testing.assert_close(meta, expected, atol=1e-5, rtol=1e-5)
    last = stimulus_meta_vector(model, tokenizer, texts[:1], last_token=True)
    with capture_outputs(blocks) as seen, torch.no_grad():
        model(input_ids=tokenizer(texts[0], return_tensors="pt")["input_ids"])
    torch.testing.assert_close(last[2], seen[2][0, -1], atol=1e-5, rtol=1e-5)
    assert decode(model, tokenizer, meta, k=2).layers == [0, 1, 2]
    for bad in ([], "one text", ["fine", "  "]):
        with pytest.raises(ValueError, match="text"):
            stimulus_meta_vector(model, tokenizer, bad)  # type: ignore[arg-type]


def test_reading_stimuli_and_finding_the_lens_leave_another_threads_pass_alone(
    tokenizer: object,
) -> None:
    """A server decodes while it answers on the same model: the hooks of the meta vector's
    reading and of the lens search neither stop nor feed on the other thread's pass."""
    model = build_model("llama")
    texts = ["i was happy today", "the dog ran in the park and then we went home"]
    alone, lens = stimulus_meta_vector(model, tokenizer, texts), find_lens(model)
    middle = list(decoder_blocks(model, "llama"))[1]
    with another_thread_meanwhile(model, middle) as seen:
        meanwhile = stimulus_meta_vector(model, tokenizer, texts)
    assert "error" not in seen, seen.get("error")
    torch.testing.assert_close(seen["logits"], seen["alone"], rtol=0, atol=0)
    torch.testing.assert_close(meanwhile, alone, rtol=0, atol=0)
    with another_thread_meanwhile(model, middle) as seen:
        found = find_lens(model)
    assert "error" not in seen, seen.get("error")
    torch.testing.assert_close(seen["logits"], seen["alone"], rtol=0, atol=0)
    assert found.norm is lens.norm and found.head is lens.head


def test_the_decode_command_prints_a_table_per_emotion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    model = build_model("llama")
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    vectors = tmp_path / "v.safetensors"
    random_bank(3, 32, ("joy", "anger")).save(vectors)
    parser = argparse.ArgumentParser(prog="emovec")
    add_decode_parser(parser.add_subparsers(dest="command"))
    argv = ["decode", "--model", str(folder), "--vectors", str(vectors), "--layers", "0,2"]
    args = parser.parse_args([*argv, "-k", "3", "--json", str(tmp_path / "d.json")])
    assert args.run is main_decode
    main_decode(args)
    out = capsys.readouterr().out
    assert "| joy layer |" in out and "| anger layer |" in out
    written = json.loads((tmp_path / "d.json").read_text())
    expected = decode(
        model, build_tokenizer(), EmotionVectors.load(vectors)["anger"], layers=[0, 2], k=3
    )
    assert written[1] == expected.to_dict()
    stimuli = tmp_path / "stimuli.txt"
    stimuli.write_text("i was happy today\n\nwe laughed at home\n")
    args = parser.parse_args(
        [
            "decode",
            "--model",
            str(folder),
            "--stimuli",
            str(stimuli),
            "--plots",
            str(tmp_path / "p"),
        ]
    )
    main_decode(args)
    assert "| stimuli layer |" in capsys.readouterr().out
    assert (tmp_path / "p" / "decode-stimuli.png").is_file()
    with pytest.raises(SystemExit):
        parser.parse_args(["decode", "--layers", "8-x"])


def test_the_decode_command_turns_a_missing_norm_into_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "opt"
    build_model("opt", word_embed_proj_dim=16).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    stimuli = tmp_path / "s.txt"
    stimuli.write_text("i was happy today\n")
    parser = argparse.ArgumentParser(prog="emovec")
    add_decode_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["decode", "--model", str(folder), "--stimuli", str(stimuli)])
    with pytest.raises(ValueError, match="final norm"):
        main_decode(args)
    both = parser.parse_args(["decode", "--stimuli", str(stimuli), "--emotions", "joy"])
    with pytest.raises(ValueError, match="do not combine"):
        main_decode(both)
