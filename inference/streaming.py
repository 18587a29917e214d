"""Token ids -> text pieces, as they are generated.

A piece is released only when it ends on a whole character: byte-fallback tokens that spell one multi-byte
character (an emoji, a CJK ideograph) decode to U+FFFD until the last byte arrives, so they are held back.
Text that could be the start of a stop string is held back too, and a completed stop string ends the stream
without being released. Every piece is new text; the pieces joined are exactly `TextStream.text`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from inference.errors import GenerationError

REPLACEMENT = "\ufffd"  # what the decoder shows for an incomplete UTF-8 sequence
CONTEXT_TOKENS = 8  # committed tokens kept as decoding context, so word-initial spaces survive
# The context grows to 2 * CONTEXT_TOKENS before it is cut back: its text is then the previous decode's
# result, so a token costs one tokenizer decode (plus one per CONTEXT_TOKENS tokens to re-decode the cut context).


def _held_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextStream:
    """Incremental detokenizer for one row: push(token) -> new text ('' while holding back); finish() flushes."""

    def __init__(self, decode: Callable[[list[int]], str], prompt: Sequence[int], stop: Sequence[str] = ()):
        if any(not s for s in stop):
            raise GenerationError("stop strings must be non-empty")
        self._decode = decode
        self._stops = tuple(stop)
        # Decoding a token alone can drop its leading space (SentencePiece strips it from the first piece), so
        # new tokens are decoded after a few committed ones and the committed text is cut off again.
        self._context = list(prompt[-CONTEXT_TOKENS:])
        self._context_text = decode(self._context)
        self._pending: list[int] = []  # tokens whose text has not been committed yet (incomplete character)
        self._held = ""  # committed text held back because a stop string may start in it
        self.token_ids: list[int] = []  # every token pushed
        self.text = ""  # everything released so far
        self.finish_reason: str | None = None  # "eos", "stop" or "length" once finished

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _pending_text(self) -> str:
        return self._decode(self._context + self._pending)[len(self._context_text) :]

    def push(self, token: int) -> str:
        """Add one generated token; return the text it releases (possibly '')."""
        if self.done:
            raise RuntimeError("push() after the stream finished")
        self.token_ids.append(token)
        self._pending.append(token)
        full = self._decode(self._context + self._pending)
        new = full[len(self._context_text) :]
        if new.endswith(REPLACEMENT):
            return ""  # the last character is still incomplete: wait for its remaining bytes
        self._context += self._pending
        self._pending = []
        if len(self._context) > 2 * CONTEXT_TOKENS:
            self._context = self._context[-CONTEXT_TOKENS:]
            self._context_text = self._decode(self._context)
        else:
            self._context_text = full
        return self._release(self._held + new)

    def _release(self, text: str) -> str:
        """Release `text` up to the first stop string (then finish) or up to a possible stop-string start."""
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            piece, self._held = text[: min(hits)], ""
            self.finish_reason = "stop"
        else:
            keep = _held_suffix(text, self._stops)
            piece, self._held = text[: len(text) - keep], text[len(text) - keep :]
        self.text += piece
        return piece

    def finish(self, reason: str) -> str:
        """End the stream ("eos" or "length"); return the text still held back or pending."""
        if self.done:
            return ""
        piece = self._held + (self._pending_text() if self._pending else "")
        self._held, self._pending = "", []
        self.finish_reason = reason
        self.text += piece
        return piece
