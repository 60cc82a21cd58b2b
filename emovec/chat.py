"""The calibrated answer in one call: a steering that also asks as its bank was calibrated.

``steer(model, vecs, joy=1.0, tokenizer=tok)`` returns a :class:`SteeredChat`, a
:class:`~emovec.hooks.Steering` that knows, besides the vectors, what the raised emotions'
placements ask of the prompt and the decoding (``steer`` alone can change neither):

- the calibrated instruction of each raised emotion (α > 0) added to the user's turn, and
  their personas as the system turn;
- the query guidance their placements record (a second pass per token against the prompt
  without the question, :class:`~emovec.guidance.BatchQueryGuidance`);
- the decoding they were calibrated under (the repetition penalty), and clean decoding.

Every route gives the same answer (greedy: the same tokens): :meth:`SteeredChat.answer`,
:meth:`SteeredChat.stream`, ``model.generate(**inputs, **s.generate_kwargs())`` with the
prompt of :meth:`SteeredChat.messages`, and ``pipeline("text-generation")`` on those
messages. Suppressed emotions (α ≤ 0) ask nothing of the prompt; a bank without such
placements (every shipped one is trained: vectors alone) asks nothing either, and the one call
then adds the decoding and clean filter to the vectors. With ``layers=`` the placements are
not applied, so neither are their prompts.

A whole conversation (system, user and assistant turns, as ``emovec serve`` receives it) is
asked the same way (:meth:`Asking.conversation`: the persona before its system turn, the
instructions after its last user turn), and ``generate_kwargs(conversations=...)`` guides it
against the same conversation without its question.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec import _scope
from emovec._chat import (
    Conversation,
    _query_list,
    asked,
    check_context,
    conversation_of,
    encode_conversations,
    encode_prompts,
    padded,
)
from emovec.generation import Decoding, generate_answers, generate_kwargs, seeded
from emovec.guidance import BatchQueryGuidance
from emovec.hooks import Steering
from emovec.models import input_device
from emovec.vectors import EmotionVectors, Placement

__all__ = ["Asking", "SteeredChat", "ask"]


@dataclass(frozen=True)
class Asking:
    """What a mix's placements ask of the prompt: the raised emotions' (α > 0) calibrated
    instructions (in the user's turn, after the query), their personas (joined, as the
    system turn; ``None``: the model's default), and their query guidance (the largest
    recorded; ``None``: none)."""

    instructions: tuple[str, ...] = ()
    persona: str | None = None
    query_guidance: float | None = None

    @classmethod
    def of(cls, strengths: Mapping[str, float], placements: Mapping[str, Placement]) -> Asking:
        """What steering ``strengths`` at ``placements`` asks (a mix: ``Asking.of(mix.
        coefficients, mix.bank.placements)``)."""
        raised = [
            placement
            for emotion, alpha in strengths.items()
            if alpha > 0 and (placement := placements.get(emotion)) is not None
        ]
        gammas = [p.query_guidance for p in raised if p.query_guidance is not None]
        return cls(
            instructions=tuple(p.instruction for p in raised if p.instruction),
            persona=" ".join(p.persona for p in raised if p.persona) or None,
            query_guidance=max(gammas) if gammas else None,
        )

    def user_turn(self, query: str) -> str:
        """``query`` as asked: with the instructions appended."""
        return asked(query, *self.instructions)

    def query_free_turn(self) -> str:
        """The user turn without the question: the instructions alone."""
        return asked("", *self.instructions).strip()

    def messages(self, query: str) -> list[dict[str, str]]:
        """The chat: the persona's system turn (if any) and the user turn."""
        return self.conversation([{"role": "user", "content": query}])

    def conversation(self, messages: Conversation) -> list[dict[str, str]]:
        """``messages`` (a chat of system, user and assistant turns) as asked: the persona
        joined before the conversation's leading system turn (a blank line apart), or as a
        system turn of its own when it has none; the instructions appended to the last user
        turn (:meth:`user_turn`). A mix that asks nothing leaves the messages as they are.

        Raises:
            TypeError, ValueError: For messages that are not a list of ``{"role": str,
                "content": str}`` (:func:`~emovec._chat.conversation_of`), or without a user
                turn.
        """
        chat = conversation_of(messages)
        last = _last_user_turn(chat)
        chat[last] = {**chat[last], "content": self.user_turn(chat[last]["content"])}
        return self._with_persona(chat)

    def query_free_conversation(self, messages: Conversation) -> list[dict[str, str]]:
        """:meth:`conversation` without its question: the last user turn holds the
        instructions alone (:meth:`query_free_turn`), the rest of the conversation stays;
        what query guidance's second pass reads."""
        chat = conversation_of(messages)
        last = _last_user_turn(chat)
        chat[last] = {**chat[last], "content": self.query_free_turn()}
        return self._with_persona(chat)

    def _with_persona(self, chat: list[dict[str, str]]) -> list[dict[str, str]]:
        if not self.persona:
            return chat
        if chat[0]["role"] == "system":
            joined = "\n\n".join(text for text in (self.persona, chat[0]["content"]) if text)
            return [{**chat[0], "content": joined}, *chat[1:]]
        return [{"role": "system", "content": self.persona}, *chat]


def _last_user_turn(chat: Sequence[Mapping[str, str]]) -> int:
    """The index of the conversation's last user turn (where the instructions go)."""
    users = [index for index, message in enumerate(chat) if message["role"] == "user"]
    if not users:
        raise ValueError("The conversation has no user turn to answer.")
    return users[-1]


def ask(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    asking: Sequence[Asking],
    *,
    steering: Steering | None = None,
    **options: Any,
) -> list[str]:
    """Answer each query as its row's :class:`Asking` says, under the applied ``steering``:
    the instructions in the user turn, the persona as the system turn, the query guidance
    against the instructions alone. :meth:`SteeredChat.answer` answers with it, and so does
    evaluation, whose recipes make each row's asking; ``options`` go to
    :func:`~emovec.generation.generate_answers` (``decoding``, ``batch_size``, ``clean``,
    ``plain_guidance``, ``parse_special``...).

    Raises:
        ValueError: For a number of askings other than of queries, or askings of one batch
            with different query guidance (one ``generate`` runs one).
    """
    queries = _query_list(queries)
    if len(asking) != len(queries):
        raise ValueError(f"Give one asking per query: {len(asking)} for {len(queries)}.")
    gammas = {a.query_guidance for a in asking}
    if len(gammas) > 1:
        raise ValueError(
            f"The rows ask for different query guidance {sorted(map(str, gammas))}; one "
            "generate call runs one: answer those rows apart."
        )
    return generate_answers(
        model,  # type: ignore[arg-type]
        tokenizer,
        [a.user_turn(q) for a, q in zip(asking, queries, strict=True)],
        steering=steering,
        systems=[a.persona for a in asking],
        query_guidance=gammas.pop() if gammas else None,
        query_free=[a.query_free_turn() for a in asking],
        **options,
    )


class _Stopped(StoppingCriteria):
    """Stops every row once ``event`` is set (a stream whose reader went away)."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> Any:
        return torch.full((input_ids.shape[0],), self._event.is_set(), device=input_ids.device)


class SteeredChat(Steering):
    """A steering that answers as its bank was calibrated; build it with
    ``steer(..., tokenizer=tok)`` (see the module docstring for what it adds).

    ``answer`` and ``stream`` apply the steering for the call when it is not applied in the
    calling context; ``generate_kwargs`` serves your own ``generate`` or ``pipeline`` inside
    ``with``. With ``rows=``, each row asks as its own mix was calibrated: ``answer`` takes
    one query per row.

    Attributes:
        tokenizer: The model's tokenizer.
        asking: What each row's mix asks of the prompt (one entry without ``rows=``).
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[nn.Module],
        deltas: Mapping[int, torch.Tensor],
        *,
        tokenizer: PreTrainedTokenizerBase,
        bank: EmotionVectors,
        asking: Sequence[Asking],
        rows: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(model, blocks, deltas, **options)
        self.tokenizer = tokenizer
        self.asking = list(asking)
        self._bank, self._rows = bank, rows
        gammas = {a.query_guidance for a in self.asking}
        if len(gammas) > 1:
            raise ValueError(
                f"The rows' placements ask for different query guidance {sorted(map(str, gammas))};"
                " one generate call runs one: steer those rows apart."
            )
        self._query_guidance = gammas.pop() if gammas else None

    def _one(self, what: str) -> Asking:
        if self._rows:
            raise ValueError(
                f"{what} serves one mix; with rows=, answer(queries) asks each row as its mix "
                "was calibrated (one query per row)."
            )
        return self.asking[0]

    def decoding(self, **changes: Any) -> Decoding:
        """The decoding the bank was calibrated under, with ``changes`` (fields of
        :class:`~emovec.generation.Decoding`, e.g. ``max_new_tokens=64``) on top."""
        return Decoding.calibrated(self._bank, **changes)

    def messages(self, query: str) -> list[dict[str, str]]:
        """The chat to generate from: the calibrated persona and instructions around
        ``query``, for ``tokenizer.apply_chat_template`` or a ``pipeline``."""
        return self._one("messages()").messages(query)

    def conversation(self, messages: Conversation) -> list[dict[str, str]]:
        """The chat to generate from for a conversation (system, user and assistant turns):
        the calibrated persona before its system turn, the instructions after its last user
        turn (:meth:`Asking.conversation`); for ``apply_chat_template`` or a ``pipeline``,
        with :meth:`generate_kwargs` given the same ``conversations``."""
        return self._one("conversation()").conversation(messages)

    def generate_kwargs(
        self,
        *,
        clean: bool = True,
        attention_mask: torch.Tensor | None = None,
        conversations: Sequence[Conversation] | None = None,
        parse_special: bool = True,
        **changes: Any,
    ) -> dict[str, Any]:
        """The keywords for ``model.generate`` (or a text-generation ``pipeline``) that
        decode as calibrated: the decoding (``changes`` as in :meth:`decoding`), the pad
        token, clean decoding (``clean=False``: unfiltered) and the query guidance, which
        reads the prompt rows it meets (their left padding, or ``attention_mask`` when
        given). Make them anew for each call; several sequences per prompt work, beam search
        with query guidance is refused.

        The query guidance's second pass reads each row's prompt without its question: by
        default the persona and instructions alone (the prompts of :meth:`messages`); for
        prompts of :meth:`conversation`, give each row's ``conversations`` as sent (one per
        row; the rest of the conversation stays in the second pass), with
        ``parse_special=False`` for text from strangers.

        Example::

            chat = tok.apply_chat_template(s.messages(q), add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
            with s:
                out = model.generate(**chat, **s.generate_kwargs(max_new_tokens=48))
        """
        decoding = self.decoding(**changes)
        processors = []
        if self._query_guidance is not None:
            processors.append(
                BatchQueryGuidance(
                    self._model,
                    self._query_free(conversations, parse_special),
                    self._query_guidance,
                    pad_token_id=self.tokenizer.pad_token_id,
                    repetition_penalty=decoding.repetition_penalty,
                    steering=self,
                    attention_mask=attention_mask,
                )
            )
        return generate_kwargs(self.tokenizer, decoding, clean=clean, processors=processors)

    def _query_free(
        self, conversations: Sequence[Conversation] | None, parse_special: bool
    ) -> list[list[int]]:
        """Each row's prompt without its question (one row for every row without ``rows=``
        and conversations)."""
        if conversations is None:
            conversations = [[{"role": "user", "content": ""}]] * len(self.asking)
        conversations = list(conversations)
        asking = self.asking if self._rows else self.asking * len(conversations)
        if len(asking) != len(conversations):
            raise ValueError(
                f"Give one conversation per row: {len(conversations)} for {len(asking)} rows."
            )
        free = [a.query_free_conversation(c) for a, c in zip(asking, conversations, strict=True)]
        return encode_conversations(self.tokenizer, free, parse_special=parse_special)

    def _applied_here(self) -> bool:
        """Whether this steering acts in the calling context; refused when it is applied in
        another (the call would run plain)."""
        if _scope.call_of(self._key) is not None:
            return True
        if self.active:
            raise RuntimeError(
                "This steering is applied in another thread or task, so it would not steer "
                "this call; call answer() there, or remove() it first."
            )
        return False

    @overload
    def answer(self, queries: str, **options: Any) -> str: ...

    @overload
    def answer(self, queries: Sequence[str], **options: Any) -> list[str]: ...

    def answer(
        self,
        queries: str | Sequence[str],
        *,
        batch_size: int = 8,
        clean: bool = True,
        parse_special: bool = True,
        **changes: Any,
    ) -> str | list[str]:
        """The calibrated answer to ``queries`` (one text, or a list answered in batches of
        ``batch_size``; with ``rows=``, one query per row, in one batch).

        ``changes`` are fields of :class:`~emovec.generation.Decoding`; ``clean=False``
        decodes unfiltered; ``parse_special=False`` keeps special tokens written in the
        queries as text (for text from strangers).
        """
        single = isinstance(queries, str)
        texts = [queries] if isinstance(queries, str) else _query_list(queries)
        if self._rows and len(texts) != len(self.asking):
            raise ValueError(
                f"steer(rows=...) has {len(self.asking)} rows; give one query per row, not "
                f"{len(texts)}."
            )
        asking = self.asking if self._rows else self.asking * len(texts)
        applied = self._applied_here()
        if not applied:
            self.apply()
        try:
            answers = ask(
                self._model,
                self.tokenizer,
                texts,
                asking,
                steering=self,
                decoding=self.decoding(**changes),
                batch_size=len(texts) if self._rows else batch_size,
                clean=clean,
                parse_special=parse_special,
            )
        finally:
            if not applied:
                self.remove()
        return answers[0] if single else answers

    def stream(
        self,
        query: str,
        *,
        clean: bool = True,
        parse_special: bool = True,
        **changes: Any,
    ) -> Iterator[str]:
        """The calibrated answer to ``query`` as it is generated, piece by piece (the
        pieces joined and stripped are :meth:`answer`'s text). ``generate`` runs in a thread
        in a copy of the calling context, so the steering reaches it; an error there is
        raised here once the pieces stop."""
        asking = self._one("stream()")
        decoding = self.decoding(**changes)
        model = self._model
        prompt = encode_prompts(
            self.tokenizer, [asking.user_turn(query)], [asking.persona], parse_special=parse_special
        )
        check_context(model, prompt, decoding.max_new_tokens)  # type: ignore[arg-type]
        inputs = padded(self.tokenizer, prompt, input_device(model))  # type: ignore[arg-type]
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self.generate_kwargs(clean=clean, **changes)
        stop = threading.Event()
        stopping = StoppingCriteriaList([_Stopped(stop)])
        seed = decoding.seed if decoding.do_sample else None
        failures: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode(), seeded(model, seed):  # type: ignore[arg-type]
                    model.generate(  # type: ignore[operator]
                        **inputs, **kwargs, streamer=streamer, stopping_criteria=stopping
                    )
            except BaseException as err:  # raised in the caller's thread below
                failures.append(err)
                streamer.end()

        applied = self._applied_here()
        if not applied:
            self.apply()
        worker = threading.Thread(target=contextvars.copy_context().run, args=(run,))
        try:
            worker.start()
            yield from streamer
        finally:  # also when the caller stops reading: generation stops at the next token
            stop.set()
            worker.join()
            if not applied:
                self.remove()
        if failures:
            raise failures[0]
