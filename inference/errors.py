"""Generation's error and warning: bad user input (entry points print it and exit with code 2), and a prompt
cut to fit the model's context."""

from core.errors import UserError


class GenerationError(UserError):
    """A prompt, sampling value or length limit that generation cannot honour; the message names it."""


class PromptTruncatedWarning(UserWarning):
    """The prompt plus max_new_tokens did not fit in max_seq_len, so the prompt lost tokens on the left."""


class HistoryTruncatedWarning(PromptTruncatedWarning):
    """A chat history did not fit in max_seq_len with max_new_tokens, so its oldest turns were dropped (never a
    system message, never the last message)."""
