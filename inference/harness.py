"""lm-evaluation-harness backend for our checkpoints: `MiniLLM`, registered as the lm-eval model "mini-llm".

    python scripts/evaluate.py --checkpoint out/tiny --tasks hellaswag --batch-size 8
    python scripts/lm_eval_cli.py --model mini-llm --model_args checkpoint=out/tiny --tasks hellaswag
    evaluate_tasks(model, tokenizer, ["hellaswag"], limit=100)        # in memory, e.g. from a training loop

Every number follows lm-eval's own `hf` backend on the model exported with scripts/convert_hf.py (tested within
1e-4 in fp32), because the pieces that decide them are the same:
- context/continuation split: TemplateLM._encode_pair (trailing spaces of the context move to the continuation,
  the continuation is the tail of the encoding of context + continuation);
- an empty context is replaced by `prefix_token_id` (BOS, as `hf` does when the tokenizer names a BOS token);
- no BOS is prepended otherwise (our tokenizer and its Hugging Face export add none), unless add_bos_token=True;
- input longer than max_length (the model's max_seq_len) keeps its last max_length + 1 tokens (left truncation);
  rolling log-likelihoods use lm-eval's disjoint windows of max_length tokens;
- generation keeps the last max_length - max_gen_toks context tokens and stops at EOS or a stop string.

lm_eval is a development dependency (requirements-dev.txt) and this is the only module that imports it, so the
rest of the package works without it; `inference/__init__.py` does not import this file.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from core.errors import UserError
from inference.generator import Generator
from inference.sampling import SamplingParams
from model import Transformer
from Tokenizer import TextTokenizer

MODEL_NAME = "mini-llm"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for the hf backend
SAMPLING_KEYS = {"temperature", "top_k", "top_p", "min_p", "repetition_penalty"}  # generation kwargs we honour
log = logging.getLogger(__name__)

Request = tuple[Any, list[int], list[int]]  # (cache key, context ids, continuation ids)


class HarnessError(UserError):
    """A model argument or generation setting the backend cannot honour; the message names it."""


def _int_arg(name: str, value: Any) -> int:
    """lm-eval passes model_args and --batch_size as strings or numbers; accept whole numbers >= 1 only."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise HarnessError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1 or number != float(value):
        raise HarnessError(f"{name} must be a whole number >= 1, got {value!r}")
    return number


@register_model(MODEL_NAME)
class MiniLLM(TemplateLM):
    """A checkpoint (or an in-memory Generator) as an lm-eval language model: batched log-likelihoods in one
    forward per batch, and generation through our KV-cached decode loop."""

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # passed by lm-eval for batch_size=auto, which we do not support
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        add_bos_token: bool = False,
        prefix_token_id: int | None = None,
        compile: bool = False,
        generator: Generator | None = None,
        **unknown: Any,
    ):
        super().__init__()
        if unknown:
            raise HarnessError(
                f"unknown model_args {sorted(unknown)} for {MODEL_NAME} (known: checkpoint, device, dtype, max_length, "
                f"max_gen_toks, add_bos_token, prefix_token_id, compile)"
            )
        if (checkpoint is None) == (generator is None):
            raise HarnessError("give exactly one of checkpoint=DIR (in model_args) or an in-memory generator")
        if generator is None:
            generator = Generator.from_checkpoint(checkpoint, device=device, dtype=dtype, compile=bool(compile))
        self.generator = generator
        self.model: Transformer = generator.model
        self.tok: TextTokenizer = generator.tokenizer
        self._device = generator.device
        self._batch_size = _int_arg("batch_size", 1 if batch_size in (None, "") else batch_size)
        model_len = self.model.cfg.max_seq_len
        self._max_length = model_len if max_length is None else _int_arg("max_length", max_length)
        if self._max_length > model_len:
            raise HarnessError(f"max_length {self._max_length} exceeds the model's max_seq_len {model_len}")
        self._max_gen_toks = _int_arg("max_gen_toks", max_gen_toks)
        self.add_bos_token = bool(add_bos_token)
        # BOS, or EOS for a tokenizer without one (an imported GPT-2 style one), as lm-eval's hf backend does
        default_prefix = self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id
        self._prefix_token_id = default_prefix if prefix_token_id is None else int(prefix_token_id)
        if not 0 <= self._prefix_token_id < self.model.cfg.vocab_size:
            raise HarnessError(f"prefix_token_id {self._prefix_token_id} is not a token id of this model")

    # ---- what lm-eval asks of a model ------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """The token that stands for an empty context (and starts rolling windows); BOS unless set."""
        return self._prefix_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Our tokenizer's ids; BOS first only with add_bos_token (and never when add_special_tokens=False)."""
        return self.tok.encode(string, bos=self.add_bos_token and add_special_tokens is not False)

    def get_model_info(self) -> dict:
        """Recorded by lm-eval in the results' config."""
        return {"model_num_parameters": self.model.num_params(), "model_dtype": str(self.model.output.weight.dtype)}

    # ---- log-likelihoods ---------------------------------------------------------------------------------------

    def _batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Request indices, longest first, in batches of batch_size: each batch pads to its first row's length,
        and an out-of-memory error shows up at the first batch rather than the last."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, **kwargs) -> list[tuple]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) per request."""
        # Input row = context + continuation without its last token, keeping the last max_length tokens.
        inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for _, ctx, cont in requests]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        self.model.clear_cache()  # the plain causal forward; a KV cache left by generation would be used instead
        with tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood") as bar:
            for batch in self._batches([len(row) for row in inputs]):
                width = len(inputs[batch[0]])
                # Right padding: causal attention never lets a real position see the pad tokens after it.
                tokens = torch.full((len(batch), width), self.tok.pad_id, dtype=torch.long)
                for row, i in enumerate(batch):
                    tokens[row, : len(inputs[i])] = torch.tensor(inputs[i])
                logits = self.model(tokens.to(self.device))  # (B, width, vocab)
                for row, i in enumerate(batch):
                    key, _, cont = requests[i]
                    end = len(inputs[i])
                    # Position p predicts token p + 1, so the continuation's tokens are predicted by the last
                    # len(cont) input positions. log_softmax in fp32 only over those rows.
                    logprobs = F.log_softmax(logits[row, end - len(cont) : end].float(), dim=-1)  # (len(cont), V)
                    target = torch.tensor(cont, device=logprobs.device)
                    score = float(logprobs.gather(-1, target[:, None]).sum())
                    greedy = bool((logprobs.argmax(dim=-1) == target).all())
                    results[i] = (score, greedy)
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, results[i])
                bar.update(len(batch))
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, scored in disjoint windows of max_length tokens (lm-eval's windows: the
        first starts from prefix_token_id, each later one sees the max_length - n tokens before it)."""
        windows: list[Request] = []
        owners: list[int] = []
        for i, (text,) in enumerate(req.args for req in requests):
            rolling = get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1,
            )
            for ctx, cont in map(make_disjoint_window, rolling):
                windows.append((None, ctx, cont))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (score, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm), strict=True):
            totals[owner] += score
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation --------------------------------------------------------------------------------------------

    def _sampling(self, kwargs: dict) -> SamplingParams:
        """lm-eval generation kwargs (after normalize_gen_kwargs) -> SamplingParams; unknown keys are an error."""
        do_sample = kwargs.pop("do_sample", False)
        unknown = sorted(set(kwargs) - SAMPLING_KEYS)
        if unknown:
            raise HarnessError(
                f"generation kwargs {unknown} are not supported by {MODEL_NAME} (supported: do_sample, until, "
                f"max_gen_toks, {', '.join(sorted(SAMPLING_KEYS))})"
            )
        params = {k: type(getattr(SamplingParams(), k))(v) for k, v in kwargs.items()}
        if not do_sample:
            params["temperature"] = 0.0
        sampling = SamplingParams(**params)
        sampling.validate()
        return sampling

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Continue each context until a stop string, EOS or max_gen_toks new tokens; the text before the stop.

        Requests are grouped by their generation kwargs, then run longest first in batches of batch_size
        (left-padded, one prefill per batch, then the KV-cached decode loop)."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until") as bar:
            for indices in groups.values():
                kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], self.max_gen_toks)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=None)  # EOS ends a row anyway
                max_gen_toks = int(kwargs.pop("max_gen_toks"))
                sampling = self._sampling(kwargs)
                room = self.max_length - max_gen_toks
                if room < 1:
                    raise HarnessError(
                        f"max_gen_toks {max_gen_toks} leaves no room for context in max_length {self.max_length}"
                    )
                # An empty context starts from prefix_token_id, as an empty log-likelihood context does.
                contexts = [self.tok_encode(requests[i].args[0])[-room:] or [self.prefix_token_id] for i in indices]
                for batch in self._batches([len(c) for c in contexts]):
                    done = self.generator.complete([contexts[b] for b in batch], max_gen_toks, sampling, until)
                    for b, completion in zip(batch, done, strict=True):
                        i = indices[b]
                        results[i] = completion.text
                        self.cache_hook.add_partial("generate_until", requests[i].args, completion.text)
                    bar.update(len(batch))
        return results


def flatten_results(results: dict) -> dict[str, float]:
    """lm-eval's results -> {"task/metric": value}; a filter other than "none" is appended ("task/metric/filter")
    and values that are not numbers (an "N/A" stderr) are left out."""
    flat = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not filter_name:
                continue
            name = f"{task}/{metric}" if filter_name == "none" else f"{task}/{metric}/{filter_name}"
            flat[name] = float(value)
    return flat


def locate_tasks(tasks: Sequence[str], include_path: str | Path | None = None) -> tuple[bool, list[str]]:
    """Where lm-eval finds `tasks` (names of tasks, groups or tags): (include_defaults, unknown names).

    lm-eval's own tasks (an index of ~15k files, seconds to build) are indexed only when include_path does not
    hold every name; include_defaults says whether evaluate_tasks needs them."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = set(TaskManager(include_path=str(include_path), include_defaults=False).all_tasks)
        if all(name in local for name in tasks):
            return False, []
    known = set(TaskManager(include_path=None if include_path is None else str(include_path)).all_tasks)
    return True, [name for name in tasks if name not in known]


def evaluate_tasks(
    model: Transformer,
    tokenizer: TextTokenizer,
    tasks: Sequence[str],
    include_path: str | Path | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    include_defaults: bool = True,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 0,
) -> dict[str, float]:
    """Run lm-eval tasks on an in-memory model; a flat {"task/metric": value} dict.

    `model` is the plain Transformer (not wrapped by DDP, FSDP or torch.compile), in whatever dtype and on whatever
    device it lives; it runs without autocast.

    For a training loop: the model's train/eval mode, its (absent) KV cache and every random number generator
    (Python, NumPy, torch CPU and CUDA) are as before the call. include_defaults=False looks for tasks under
    include_path only (indexing lm-eval's own ~15k task files takes seconds). bootstrap_iters=0 skips the
    bootstrapped standard errors (perplexity metrics get "N/A", which is left out).

    Under torchrun each process evaluates every document (the backend is one rank of one, so the forwards of all
    ranks match, as FSDP needs), but lm-eval returns results only where LOCAL_RANK is 0: elsewhere this is {}.
    """
    from lm_eval import simple_evaluate  # the evaluator pulls in datasets and more; only import it when used
    from lm_eval.tasks import TaskManager

    was_training = model.training
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [model.tok_embeddings.weight.device] if model.tok_embeddings.weight.is_cuda else []
    try:
        with torch.random.fork_rng(devices=devices):
            lm = MiniLLM(generator=Generator(model, tokenizer), batch_size=batch_size)
            manager = TaskManager(include_path=None if include_path is None else str(include_path),
                                  include_defaults=include_defaults)
            results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters, log_samples=False)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        model.clear_cache()
        model.train(was_training)
    return {} if results is None else flatten_results(results)
