"""The model's side of the server: a request checked and turned into a batch row as the bank's
recipe asks (:meth:`Engine.admit`, in the event loop, before anything reaches the model), and
a batch of rows generated (:meth:`Engine.run`, in the worker thread).

Both go through the one call (:func:`emovec.steering.steer` with ``tokenizer=``): a request
is steered, prompted (:meth:`~emovec.chat.SteeredChat.conversation`) and decoded
(:meth:`~emovec.chat.SteeredChat.generate_kwargs`: the calibrated repetition penalty, clean
decoding, query guidance) exactly as ``steer(model, vecs, **emotions, tokenizer=tok)``
answers it; a batch is ``steer(..., rows=[...])``, each row its request's mix.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch
from jinja2 import TemplateError
from torch import nn
from transformers import StoppingCriteriaList
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._chat import check_context, encode_conversations, padded
from emovec._doses import DoseError
from emovec.chat import SteeredChat
from emovec.generation import Decoding, seeded
from emovec.layers import context_length
from emovec.models import input_device
from emovec.server.batching import Job, RowRouter
from emovec.server.options import ServerOptions
from emovec.server.protocol import APIError, ChatRequest
from emovec.steering import steer
from emovec.vectors import EmotionVectors

__all__ = ["Engine"]


class Engine:
    """Admits requests and generates batches of them with one model and bank.

    The tokenizer is used by the event loop (admitting) and the worker thread (decoding the
    answers); a lock keeps the two apart (a fast tokenizer refuses concurrent use).

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer (left padding, a pad token: as ``load_model`` sets it).
        bank: The emotion vectors requests steer with.
        options: The server's limits.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        bank: EmotionVectors,
        options: ServerOptions,
    ) -> None:
        self.model, self.tokenizer, self.bank, self.options = model, tokenizer, bank, options
        self._lock = threading.Lock()
        self._context = context_length(model)
        self._eos = _eos_ids(model)

    def _steer(self, rows: list[dict[str, float]]) -> SteeredChat:
        return steer(
            self.model,
            self.bank,
            rows=rows,
            tokenizer=self.tokenizer,
            max_dose=self.options.max_dose,
            guard="raise",
        )

    def warm_up(self) -> None:
        """Build what the first request would wait for (clean decoding's block list)."""
        with self._lock:
            self._steer([{}]).generate_kwargs(clean=self.options.clean)

    # --- admitting ----------------------------------------------------------------------

    def admit(self, request: ChatRequest) -> Job:
        """The request as a batch row, every limit checked (call in the event loop).

        Raises:
            APIError: 4xx for anything the request asks that the server will not do.
        """
        problem = request.unsupported()
        if problem is not None:
            raise problem
        if request.model != self.options.model_name:
            raise APIError(
                404,
                f"The model {request.model!r} is not served here; this server serves "
                f"{self.options.model_name!r}.",
                param="model",
                code="model_not_found",
            )
        conversation = [message.as_turn() for message in request.messages]
        if not any(turn["role"] == "user" for turn in conversation):
            raise APIError(400, "The messages have no user turn to answer.", param="messages")
        stops = request.stops()
        if len(stops) > self.options.max_stop or not all(stops):
            raise APIError(
                400,
                f"Give at most {self.options.max_stop} stop strings, none empty.",
                param="stop",
            )
        strengths = self._strengths(request.emotions or {})
        chat = self._checked_mix(strengths)
        prompt = self._prompt(chat, conversation)
        decoding = self._decoding(chat, request, prompt)
        return Job(
            strengths=strengths,
            conversation=conversation,
            prompt=prompt,
            decoding=decoding,
            query_guidance=chat.asking[0].query_guidance,
            placed=(chat.positions, chat.schedule) if strengths else None,
            stops=tuple(stops),
            stream=request.stream,
            context=self._context,
        )

    def _strengths(self, emotions: Mapping[str, float]) -> dict[str, float]:
        unknown = sorted(set(emotions) - set(self.bank.emotions))
        if unknown:
            raise APIError(
                400,
                f"Unknown emotion {unknown[0]!r}; this server steers "
                f"{', '.join(self.bank.emotions)}.",
                param="emotions",
                code="unknown_emotion",
            )
        limit = self.options.max_strength
        for emotion, alpha in emotions.items():
            if not math.isfinite(alpha) or abs(alpha) > limit:
                raise APIError(
                    400,
                    f"The strength {emotion}={alpha:g} is beyond this server's limit of "
                    f"±{limit:g}.",
                    param=f"emotions.{emotion}",
                    code="strength_too_large",
                )
        return {emotion: float(alpha) for emotion, alpha in emotions.items() if alpha != 0}

    def _checked_mix(self, strengths: dict[str, float]) -> SteeredChat:
        """The request's mix alone: its dose checked, what it asks of the prompt."""
        try:
            return self._steer([strengths])
        except DoseError as err:
            raise APIError(400, str(err), param="emotions", code="dose_too_high") from None
        except (KeyError, ValueError, TypeError) as err:
            raise APIError(400, str(err), param="emotions", code="invalid_value") from None

    def _prompt(self, chat: SteeredChat, conversation: list[dict[str, str]]) -> list[int]:
        """The prompt as the mix asks, special tokens in the messages kept as text."""
        try:
            asked = chat.asking[0].conversation(conversation)
            with self._lock:
                return encode_conversations(self.tokenizer, [asked], parse_special=False)[0]
        except (TemplateError, ValueError, TypeError) as err:
            raise APIError(
                400, f"The messages do not fit the model's chat template: {err}", param="messages"
            ) from None

    def _decoding(self, chat: SteeredChat, request: ChatRequest, prompt: list[int]) -> Decoding:
        """The bank's calibrated decoding with the request's sampling and length on top."""
        asked = request.max_tokens or request.max_completion_tokens
        if asked is not None and asked > self.options.max_tokens:
            raise APIError(
                400,
                f"max_tokens={asked} is more than this server gives ({self.options.max_tokens}).",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        tokens = asked or min(self.options.default_tokens, self.options.max_tokens)
        if asked is None and self._context is not None:
            tokens = max(min(tokens, self._context - len(prompt)), 1)
        try:
            check_context(self.model, [prompt], tokens)  # type: ignore[arg-type]
        except ValueError as err:
            raise APIError(
                400, str(err), param="messages", code="context_length_exceeded"
            ) from None
        changes: dict[str, Any] = {"max_new_tokens": tokens}
        if request.temperature is not None:
            changes["do_sample"] = request.temperature > 0
            if request.temperature > 0:
                changes["temperature"] = request.temperature
        if request.top_p is not None:
            changes["top_p"] = request.top_p
        if request.seed is not None:
            changes["seed"] = request.seed
        try:
            decoding = chat.decoding(**changes)
        except ValueError as err:
            raise APIError(400, str(err), code="invalid_value") from None
        if decoding.do_sample and request.seed is None:  # unseeded: a fresh draw each time
            decoding = chat.decoding(**changes, seed=secrets.randbelow(2**32))
        return decoding

    # --- generating ---------------------------------------------------------------------

    def run(self, jobs: list[Job]) -> None:
        """Generate one batch (in the worker thread): every row ends, with its answer or an
        error, however ``generate`` ends."""
        router = RowRouter(jobs, self._decode, self._eos)
        try:
            chat = self._steer([job.strengths for job in jobs])
            decoding = jobs[0].decoding
            with self._lock:
                inputs = padded(
                    self.tokenizer,
                    [job.prompt for job in jobs],
                    input_device(self.model),  # type: ignore[arg-type]
                )
                kwargs = chat.generate_kwargs(
                    clean=self.options.clean,
                    attention_mask=inputs["attention_mask"],
                    conversations=[job.conversation for job in jobs],
                    parse_special=False,
                    **{**asdict(decoding), "max_new_tokens": max(job.max_tokens for job in jobs)},
                )
            seed = decoding.seed if decoding.do_sample else None
            with torch.inference_mode(), seeded(self.model, seed), chat:  # type: ignore[arg-type]
                self.model.generate(  # type: ignore[operator]
                    **inputs,
                    **kwargs,
                    streamer=router,
                    stopping_criteria=StoppingCriteriaList([router.stopping]),
                )
        except Exception as err:  # every row gets it; the server goes on
            router.fail(
                APIError(500, f"Generation failed: {err}", type="server_error", code="generation")
            )
        finally:
            router.end()

    def _decode(self, tokens: list[int]) -> str:
        with self._lock:
            return str(self.tokenizer.decode(tokens, skip_special_tokens=True))


def _eos_ids(model: nn.Module) -> set[int]:
    """The end-of-sequence ids ``generate`` stops at (its generation config's, else the
    model config's)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(token) for token in (eos if isinstance(eos, (list, tuple)) else [eos])}
