"""Command line of run_inference.py: parse the flags, build a Generator, stream continuations to stdout.

Bad input (a missing checkpoint, an empty prompt, an out-of-range sampling value) prints one `error: ...` line
to stderr and exits with code 2; progress and speed go to stderr, only generated text to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch

from core import cli
from core.device import resolve_device, resolve_dtype
from core.errors import DataError
from inference.errors import GenerationError
from inference.generator import DEFAULT_MAX_NEW_TOKENS, Generator
from inference.sampling import SEED_LIMIT, SamplingParams
from Tokenizer.hf_tokenizer import HFTokenizer


def build_parser() -> argparse.ArgumentParser:
    """The run_inference.py flags."""
    p = cli.ArgumentParser(prog="run_inference.py", description="Generate text from a checkpoint (KV-cached decoding).",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a training run's out_dir (latest)")
    p.add_argument("--prompt", help="prompt text; '-' reads it from stdin (one trailing newline dropped)")
    p.add_argument("--interactive", action="store_true", help="read prompts in a loop (empty line or EOF quits)")
    p.add_argument("--chat", action="store_true",
                   help="multi-turn chat through the tokenizer's chat template (empty line or EOF quits); with "
                        "--prompt, answer that one message and exit")
    p.add_argument("--system", help="system message for --chat")
    p.add_argument("--bos", action="store_true",
                   help="start the prompt with the BOS token (allows an empty prompt; automatic when the tokenizer's "
                   "model expects BOS, as imported Llama models do)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 disables")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]; 1 disables")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats; 1 disables")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (sample i uses seed + i)")
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--num-samples", type=int, default=1, help="continuations per prompt")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA graphs on GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch's ops (default: torch's choice, one per core); on a machine busier than "
                   "it has cores, 1 decodes small models several times faster")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the whole context every step (slow)")
    return p


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The sampling flags as SamplingParams, checked (a bad value names its flag)."""
    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    params.validate(_flag)
    return params


def _check_flags(args: argparse.Namespace) -> None:
    """The flags that need no checkpoint, named as typed, before anything is loaded."""
    for name in ("max_new_tokens", "num_samples", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise GenerationError(f"{_flag(name)} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.seed < SEED_LIMIT:
        raise GenerationError(f"--seed must be in [0, 2**63), got {args.seed}")
    last = args.seed + args.num_samples - 1  # sample i uses seed + i
    if last >= SEED_LIMIT:
        raise GenerationError(f"--seed {args.seed} + --num-samples {args.num_samples} - 1 = {last} is past the "
                              "largest seed, 2**63 - 1")
    if any(not s for s in args.stop):
        raise GenerationError("--stop must not be empty (an empty string would stop before the first token)")


def _utf8(text: str, where: str) -> str:
    """`text` if it is valid UTF-8 text; argv bytes that are not arrive as lone surrogates (surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start].encode("utf-8", "surrogateescape") if "\udc80" <= text[e.start] <= "\udcff" else None
        what = f"byte 0x{bad.hex()}" if bad else f"character U+{ord(text[e.start]):04X}"
        raise GenerationError(f"{where} is not valid UTF-8 text ({what} at character {e.start})") from None
    return text


def _read_stdin() -> str:
    """All of stdin as text, decoded strictly: bytes that are not UTF-8 are an error, not silently replaced."""
    if not hasattr(sys.stdin, "buffer"):  # already text (a caller replaced sys.stdin)
        return _utf8(sys.stdin.read(), "--prompt - (stdin)")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GenerationError(f"--prompt - (stdin) is not valid UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                              f"{e.start})") from None


def _read_prompt(args: argparse.Namespace) -> str | None:
    """The --prompt text ('-' reads stdin); None in interactive mode without --prompt."""
    if args.prompt is None:
        if not args.interactive:
            raise GenerationError("give --prompt TEXT (or --prompt - to read stdin), or --interactive")
        return None
    if args.prompt == "-":
        text = _read_stdin()
        return text[:-1] if text.endswith("\n") else text
    return _utf8(args.prompt, "--prompt")


def print_stream(gen: Generator, pieces, eos_means: str = "eos"):
    """Write streamed text pieces to stdout as they come, then a speed line to stderr; returns the completion."""
    start = time.perf_counter()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    seconds = time.perf_counter() - start
    done = gen.last[0]
    n = len(done.token_ids)
    print(flush=True)
    reason = eos_means if done.finish_reason == "eos" else done.finish_reason
    print(f"[{n} tokens in {seconds:.2f} s, {n / seconds:.1f} tokens/s, stopped by {reason}]",
          file=sys.stderr, flush=True)
    return done


def _stream_samples(gen: Generator, prompt: str, args: argparse.Namespace, sampling: SamplingParams) -> None:
    """Stream --num-samples continuations of one prompt to stdout; a speed line per sample to stderr."""
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"{'' if i == 0 else chr(10)}--- sample {i + 1}/{args.num_samples} ---", flush=True)
        print_stream(gen, gen.stream(prompt, args.max_new_tokens, sampling, args.stop, args.seed + i, args.bos))


def _interactive(gen: Generator, args: argparse.Namespace, sampling: SamplingParams) -> None:
    """Prompt loop: each line is an independent prompt; an empty line or EOF ends it."""
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            print()
            return
        except UnicodeDecodeError as e:  # a line that is not UTF-8 does not end the session either
            print(f"error: the prompt is not valid UTF-8 text ({e.reason})", file=sys.stderr)
            continue
        if not prompt:
            return
        try:
            _stream_samples(gen, _utf8(prompt, "the prompt"), args, sampling)
        except GenerationError as e:  # a bad prompt does not end the session
            print(f"error: {e}", file=sys.stderr)


def _reply(gen: Generator, messages: list[dict], args: argparse.Namespace, sampling: SamplingParams) -> str:
    """Stream the assistant's reply to stdout, a speed line to stderr; return the reply."""
    return print_stream(gen, gen.chat(messages, args.max_new_tokens, sampling, args.stop, args.seed),
                        eos_means="end of turn").text


def _chat(gen: Generator, prompt: str | None, args: argparse.Namespace, sampling: SamplingParams) -> None:
    """Answer `prompt`, or hold a conversation read line by line from stdin (history kept across turns)."""
    if not gen.tokenizer.has_chat_tokens and isinstance(gen.tokenizer, HFTokenizer):
        raise DataError(f"the imported model {args.checkpoint} has no chat template (its tokenizer_config.json or "
                        "chat_template.jinja): it was not made to chat; continue a prompt without --chat")
    if not gen.tokenizer.has_chat_tokens:
        raise DataError(
            f"the tokenizer of {args.checkpoint} has no chat tokens, so this model was not trained to chat: add them "
            f"with `python scripts/add_chat_tokens.py --checkpoint {args.checkpoint} --out NEW_DIR`, fine-tune "
            "NEW_DIR on conversations, then chat with that checkpoint"
        )
    messages = [{"role": "system", "content": args.system}] if args.system is not None else []
    if prompt is not None:
        _reply(gen, [*messages, {"role": "user", "content": prompt}], args, sampling)
        return
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return
        if not line:
            return
        try:
            reply = _reply(gen, [*messages, {"role": "user", "content": line}], args, sampling)
        except GenerationError as e:  # a message that cannot fit does not end the conversation
            print(f"error: {e}", file=sys.stderr)
            continue
        messages += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]


def _check_chat_flags(args: argparse.Namespace) -> None:
    if args.system is not None and not args.chat:
        raise GenerationError("--system needs --chat")
    if args.chat:
        clash = [flag for flag, on in (("--interactive", args.interactive), ("--bos", args.bos),
                                       ("--num-samples", args.num_samples != 1)) if on]
        if clash:
            raise GenerationError(f"{clash[0]} does not apply to --chat (which is interactive already)")


def run(args: argparse.Namespace) -> None:
    """Everything run_inference.py does, after parsing."""
    sampling = sampling_params(args)
    _check_flags(args)
    _check_chat_flags(args)
    device = resolve_device(args.device, "--device")
    dtype = resolve_dtype(args.dtype, device, "--dtype")
    prompt = None if args.chat and args.prompt is None else _read_prompt(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    gen = Generator.from_checkpoint(args.checkpoint, device, dtype, args.compile, not args.no_kv_cache)
    if args.chat:
        _chat(gen, prompt, args, sampling)
        return
    if prompt is not None:
        gen.encode(prompt, args.bos)  # an empty prompt is the first thing to hear about, before the length rule
    if args.max_new_tokens >= gen.max_seq_len:
        raise GenerationError(f"--max-new-tokens ({args.max_new_tokens}) must be less than the checkpoint's "
                              f"model.max_seq_len ({gen.max_seq_len})")
    if prompt is not None:
        _stream_samples(gen, prompt, args, sampling)
    if args.interactive:
        _interactive(gen, args, sampling)


def main(argv: list[str] | None = None) -> int:
    """Parse and run; user errors are one line and exit code 2 (core.cli.run)."""
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    return cli.run(lambda: run(args))
