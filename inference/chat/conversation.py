"""One conversation: its turns, the system prompt, and the part of it the model still sees.

The id sequence for the next reply is the whole conversation (from the first turn still
in view) rendered through the chat template and tokenized again each time. The engine
keeps the longest common prefix of that sequence and of what its KV cache holds, so an
unchanged history costs nothing; where re-rendering differs from the cache (a reply that
tokenizes differently from how it was sampled, turns dropped from the front), prefill
resumes at the first differing token.

When the conversation no longer fits, the oldest turns leave the model's view (they stay
in `turns`; `first_in_context` says where the view starts); the system prompt always
stays, the template places it before the first turn kept. Nothing here knows about a UI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ContextOverflowError
from ..tokenizer import Tokenizer
from .templates import ChatTemplate, ChatTemplateError, continuation_ids, prompt_ids


@dataclass
class Message:
    """One message as shown and stored."""

    role: str                        # "user" | "assistant"
    text: str
    ids: list[int] | None = None     # assistant: the generated ids, exactly as sampled
    status: str = "complete"         # assistant: complete | stopped | max_tokens | context_full | error
    db_id: int | None = None         # its row in a history store, if any
    stats: dict = field(default_factory=dict)
    model: str = ""                  # assistant: the model that wrote it


@dataclass(eq=False)
class Turn:
    """A user message and the reply shown for it (None until there is one).

    `replies` holds every reply the message got, oldest first, the shown one included:
    regenerating keeps the earlier ones as alternatives to flip back to.
    """

    user: Message
    reply: Message | None = None
    views: list = field(default_factory=list)   # a front end's objects for this turn; unused here
    replies: list[Message] = field(default_factory=list)

    def alternatives(self) -> list[Message]:
        """Every reply, in order, the shown one included (also one set as `reply` directly)."""
        if self.reply is not None and not any(r is self.reply for r in self.replies):
            self.replies.append(self.reply)
        return self.replies

    def position(self) -> tuple[int, int]:
        """(1-based index of the shown reply, number of replies); (0, n) while none is shown."""
        alts = self.alternatives()
        index = next((i for i, r in enumerate(alts) if r is self.reply), -1)
        return index + 1, len(alts)


@dataclass(frozen=True)
class ReplyPlan:
    """What the next reply continues: `ids`; `dropped` turns left the view to make room;
    `kept` turns remain in view (the last one included)."""

    ids: list[int]
    dropped: int
    kept: int


#: how a reply can end and still be continued: cut short, not finished by the model
CONTINUABLE = ("max_tokens", "stopped", "context_full")


def reply_reserve(max_new_tokens: int, n_ctx: int) -> int:
    """Room kept free for a reply when deciding whether old turns must go."""
    return max(1, min(max_new_tokens, n_ctx // 4))


class Conversation:
    """Turns, system prompt and context window of one chat (`n_ctx` positions)."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate, n_ctx: int,
                 system: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.n_ctx = n_ctx
        self.system = system or ""       # "" = the template's own default (if it has one)
        self.turns: list[Turn] = []
        self.first_in_context = 0        # turns before this were dropped to make room
        self.conversation_id: int | None = None   # its id in a history store, if any
        self._planned = 0                # length of the last planned sequence

    def reset(self) -> None:
        self.turns = []
        self.first_in_context = 0
        self.conversation_id = None

    def add_user(self, text: str) -> Turn:
        turn = Turn(Message("user", text))
        self.turns.append(turn)
        return turn

    def drop_last_reply(self) -> Message | None:
        """Regenerate: stop showing the last reply (it stays in `replies` as an
        alternative); the next plan ends with its user message."""
        if not self.turns or self.turns[-1].reply is None:
            return None
        turn = self.turns[-1]
        turn.alternatives()
        reply, turn.reply = turn.reply, None
        return reply

    def set_reply(self, turn: Turn, reply: Message) -> None:
        """Show `reply` for `turn` (a new one is added to its alternatives)."""
        turn.alternatives()
        if not any(r is reply for r in turn.replies):
            turn.replies.append(reply)
        turn.reply = reply

    def flip_reply(self, step: int) -> Message | None:
        """Show the previous (step < 0) or next alternative reply of the last turn; the
        conversation continues from the one shown. None when there is nothing to flip to."""
        if not self.turns:
            return None
        turn = self.turns[-1]
        alts = turn.alternatives()
        if len(alts) < 2:
            return None
        at, _ = turn.position()
        new = min(max((at - 1 if at else len(alts)) + step, 0), len(alts) - 1)
        if at and new == at - 1:
            return None
        turn.reply = alts[new]
        return turn.reply

    def edit_last(self, text: str) -> tuple[Turn, Turn]:
        """Edit-and-resend: the last turn is replaced by one with `text` and no reply.
        Returns (old turn, new turn); the old one's replies are gone from the model's view."""
        if not self.turns:
            raise ValueError("there is no message to edit")
        old = self.turns.pop()
        return old, self.add_user(text)

    def rebind(self, tokenizer: Tokenizer, template: ChatTemplate, n_ctx: int) -> None:
        """Continue this conversation on another model: texts stay, ids are re-rendered
        with its tokenizer and template, and the context view is fitted again."""
        self.tokenizer, self.template, self.n_ctx = tokenizer, template, n_ctx
        self.first_in_context = 0
        self._planned = 0

    # -- the text and ids the model sees ---------------------------------------------
    def messages(self, start: int | None = None) -> list[dict[str, Any]]:
        """Template input for the turns from `start` (default: the first in view)."""
        out: list[dict[str, Any]] = []
        if self.system.strip() and self.template.uses_system:
            out.append({"role": "system", "content": self.system})
        for turn in self.turns[self.first_in_context if start is None else start:]:
            out.append({"role": "user", "content": turn.user.text})
            if turn.reply is not None:
                out.append({"role": "assistant", "content": turn.reply.text})
        return out

    def sequence(self, start: int | None = None) -> list[int]:
        """Ids of the turns in view; when the last turn awaits a reply they end with the
        template's generation prompt (what the reply continues)."""
        awaiting = bool(self.turns) and self.turns[-1].reply is None
        return prompt_ids(self.template, self.tokenizer, self.messages(start),
                          add_generation_prompt=awaiting)

    def context_used(self) -> int:
        """Positions the turns in view fill (for a context gauge: if the template fails on
        this history, the last plan's length plus the reply since)."""
        if not self.turns:
            return 0
        try:
            return len(self.sequence())
        except ChatTemplateError:
            reply = self.turns[-1].reply
            return self._planned + len(reply.ids or []) if reply is not None else self._planned

    def fit(self, max_new_tokens: int) -> int:
        """Move the view forward to the first turn from which the conversation leaves room
        for a reply (the last turn always stays). Returns how many turns left the view.

        Fewer turns never render longer, so the first such turn is found by bisection: a
        long history costs a few renders, not one per turn dropped.
        """
        reserve = reply_reserve(max_new_tokens, self.n_ctx)
        lo, hi = self.first_in_context, max(self.first_in_context, len(self.turns) - 1)

        def fits(start: int) -> bool:
            return len(self.sequence(start)) + reserve <= self.n_ctx

        if lo < hi and not fits(lo):
            lo += 1
            while lo < hi:
                mid = (lo + hi) // 2
                if fits(mid):
                    hi = mid
                else:
                    lo = mid + 1
        dropped = lo - self.first_in_context
        self.first_in_context = lo
        return dropped

    def can_continue(self) -> bool:
        """The last reply was cut short (the length limit, a stop, a full context) under a
        chat template: it can be continued where it ends. (Completion mode continues
        by an empty turn instead: its text has no turn markers to stay inside.)"""
        if not self.turns or self.template.is_completion:
            return False
        reply = self.turns[-1].reply
        return reply is not None and reply.status in CONTINUABLE and bool(reply.text)

    def plan_continuation(self, max_new_tokens: int) -> ReplyPlan:
        """The ids that continue the last reply mid-sentence: the prompt it answered, as
        for a new reply, then the reply's own ids, with no end-of-turn marker after them
        (that is what the KV cache already holds, so nothing is read again). Ids that
        do not decode to the reply's text (another model's, after a switch) are replaced
        by the text encoded; the reply's `ids` become the ones used.
        ContextOverflowError when the reply already fills the context."""
        if not self.can_continue():
            raise ValueError("the last reply is not one that can be continued")
        reply = self.turns[-1].reply
        assert reply is not None
        dropped = self.fit(max_new_tokens)
        ids = list(reply.ids or [])
        if not ids or not all(0 <= i < self.tokenizer.vocab_size for i in ids) \
                or self.tokenizer.decode(ids) != reply.text:
            ids = self.tokenizer.encode(reply.text, bos=False)
        seq = continuation_ids(self.template, self.tokenizer, self.messages(), ids)
        if len(seq) + 1 >= self.n_ctx:
            raise ContextOverflowError(f"this reply already fills the model's context ({len(seq)} of "
                                       f"{self.n_ctx} tokens): it cannot be continued")
        reply.ids = ids
        self._planned = len(seq) - len(ids)
        return ReplyPlan(seq, dropped, len(self.turns) - self.first_in_context)

    def plan_reply(self, max_new_tokens: int) -> ReplyPlan:
        """The ids the next reply continues, dropping the oldest turns (never the system
        prompt) until a reply has room. ContextOverflowError when the last message alone
        does not fit."""
        dropped = self.fit(max_new_tokens)
        ids = self.sequence()
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(f"this message needs {len(ids)} tokens but the model's context "
                                       f"holds {self.n_ctx}; shorten it")
        self._planned = len(ids)
        return ReplyPlan(ids, dropped, len(self.turns) - self.first_in_context)
