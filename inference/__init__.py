"""Text generation from a checkpoint: prefill once, decode token by token through the static KV cache."""

from inference.decode import DecodeStep, decode_one_token, generate_tokens, left_pad, prefill
from inference.errors import GenerationError, PromptTruncatedWarning
from inference.generator import Completion, Generator
from inference.sampling import Sampler, SamplingParams
from inference.streaming import TextStream

__all__ = [
    "Completion",
    "DecodeStep",
    "GenerationError",
    "Generator",
    "PromptTruncatedWarning",
    "Sampler",
    "SamplingParams",
    "TextStream",
    "decode_one_token",
    "generate_tokens",
    "left_pad",
    "prefill",
]
