"""Text generation from a checkpoint: prefill once, decode token by token through the static KV cache."""

from inference.chat import ChatFormatError, encode_chat, encode_chat_for_training, fit_chat
from inference.decode import DecodeStep, decode_one_token, generate_tokens, left_pad, prefill
from inference.errors import GenerationError, HistoryTruncatedWarning, PromptTruncatedWarning
from inference.generator import Completion, Generator
from inference.sampling import Sampler, SamplingParams
from inference.streaming import TextStream

__all__ = [
    "ChatFormatError",
    "Completion",
    "DecodeStep",
    "GenerationError",
    "Generator",
    "HistoryTruncatedWarning",
    "PromptTruncatedWarning",
    "Sampler",
    "SamplingParams",
    "TextStream",
    "decode_one_token",
    "encode_chat",
    "encode_chat_for_training",
    "fit_chat",
    "generate_tokens",
    "left_pad",
    "prefill",
]
