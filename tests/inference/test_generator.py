"""Generator end to end on real checkpoints: cache parity, batching, stopping, streaming, seeds, length rule."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from core.errors import CheckpointError
from inference import DecodeStep, GenerationError, Generator, PromptTruncatedWarning, SamplingParams
from model import Transformer
from model.checkpoint import save_model_checkpoint
from tests.helpers import randomize
from tests.inference.conftest import DOCS, MAX_SEQ_LEN, tiny_config

PROMPTS = ["Hello", "The quick brown fox jumps over", "def add(a, b):\n    return", "a"]
SAMPLED = SamplingParams(temperature=1.0, top_k=50, top_p=0.95)


@pytest.fixture(scope="module")
def gen(random_ckpt: Path) -> Generator:
    return Generator.from_checkpoint(random_ckpt, device="cpu")


@pytest.fixture(scope="module")
def memorized(memorized_ckpt: Path) -> Generator:
    return Generator.from_checkpoint(memorized_ckpt, device="cpu")


def test_loads_fp32_on_cpu_with_the_tokenizer(gen: Generator) -> None:
    assert gen.model.tok_embeddings.weight.dtype == torch.float32
    assert gen.device.type == "cpu"
    assert gen.tokenizer.vocab_size == gen.model.cfg.vocab_size


def test_greedy_with_and_without_kv_cache_is_identical(random_ckpt: Path, gen: Generator) -> None:
    no_cache = Generator.from_checkpoint(random_ckpt, device="cpu", use_kv_cache=False)
    for prompt in PROMPTS:
        cached = gen.generate(prompt, 40)[0]
        recomputed = no_cache.generate(prompt, 40)[0]
        assert cached.token_ids == recomputed.token_ids
        assert cached.text == recomputed.text
        assert len(cached.token_ids) > 0


def test_static_cache_step_matches_dynamic(random_ckpt: Path, gen: Generator) -> None:
    """The compiled step's form (tensor position, whole-cache mask) run eagerly gives the same tokens."""
    static = Generator.from_checkpoint(random_ckpt, device="cpu")
    static.step = DecodeStep(static=True)
    ids = [gen.encode(p) for p in PROMPTS]
    assert static.generate_ids(ids, 30) == gen.generate_ids(ids, 30)
    assert static.model.cache_len == MAX_SEQ_LEN


def test_batched_rows_equal_single_prompt_rows(gen: Generator, memorized: Generator) -> None:
    for g, prompts in ((gen, PROMPTS), (memorized, [d.split(" ")[0] for d in DOCS] + ["Hello 🎉 world,"])):
        batched = g.generate(prompts, 30)
        for prompt, row in zip(prompts, batched, strict=True):
            alone = g.generate(prompt, 30)[0]
            assert (row.token_ids, row.text, row.finish_reason) == (alone.token_ids, alone.text, alone.finish_reason)


def test_batched_without_cache_equals_with_cache(random_ckpt: Path, gen: Generator) -> None:
    no_cache = Generator.from_checkpoint(random_ckpt, device="cpu", use_kv_cache=False)
    ids = [gen.encode(p) for p in PROMPTS]
    assert no_cache.generate_ids(ids, 20) == gen.generate_ids(ids, 20)


def test_memorized_documents_come_back_and_stop_at_eos(memorized: Generator) -> None:
    for doc in DOCS:
        prompt = doc.split(" ")[0]
        done = memorized.generate(prompt, 80)[0]
        assert prompt + done.text == doc
        assert done.finish_reason == "eos"
        assert memorized.tokenizer.eos_id not in done.token_ids


def test_streamed_pieces_join_to_the_final_text(memorized: Generator) -> None:
    for doc in DOCS:
        pieces = list(memorized.stream(doc.split(" ")[0], 80))
        assert "".join(pieces) == memorized.last[0].text == doc[len(doc.split(" ")[0]):]
        assert all(p and "\ufffd" not in p for p in pieces)
    assert "🎉" in pieces or "✨" in pieces or "加" in pieces  # multi-byte characters arrive whole


def test_stop_strings(memorized: Generator) -> None:
    done = memorized.generate("Hello", 80, stop=["世界", "zzz"])[0]
    assert done.text == " 🎉 world, 你好"
    assert done.finish_reason == "stop"
    pieces = list(memorized.stream("Hello", 80, stop=["world"]))
    assert "".join(pieces) == " 🎉 "


def test_max_new_tokens_ends_with_length(memorized: Generator) -> None:
    done = memorized.generate("Hello", 5)[0]
    assert len(done.token_ids) == 5 and done.finish_reason == "length"
    assert DOCS[0].startswith("Hello" + done.text)


def test_same_seed_same_text_other_seed_other_text(gen: Generator) -> None:
    a = gen.generate(PROMPTS, 30, SAMPLED, seed=11)
    b = gen.generate(PROMPTS, 30, SAMPLED, seed=11)
    c = gen.generate(PROMPTS, 30, SAMPLED, seed=12)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    streamed = "".join(gen.stream(PROMPTS[1], 30, SAMPLED, seed=11))
    assert streamed == gen.generate(PROMPTS[1], 30, SAMPLED, seed=11)[0].text


def test_empty_prompt_needs_bos(gen: Generator) -> None:
    with pytest.raises(GenerationError, match="empty"):
        gen.generate("", 5)
    assert len(gen.generate("", 5, bos=True)[0].token_ids) == 5


def test_too_long_prompt_is_cut_from_the_left_with_a_warning(gen: Generator) -> None:
    long_prompt = "hello there " * 40
    assert len(gen.encode(long_prompt)) + 30 > MAX_SEQ_LEN
    with pytest.warns(PromptTruncatedWarning, match="keeping the last 66"):
        done = gen.generate(long_prompt, 30)[0]
    assert done.prompt_tokens == MAX_SEQ_LEN - 30
    assert len(done.token_ids) == 30
    assert done.token_ids == gen.generate_ids([gen.encode(long_prompt)[-(MAX_SEQ_LEN - 30):]], 30)[0]


def test_fitting_prompt_has_no_warning(gen: Generator) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen.generate("hello", MAX_SEQ_LEN - len(gen.encode("hello")))


@pytest.mark.parametrize("max_new_tokens", [0, MAX_SEQ_LEN, MAX_SEQ_LEN + 5])
def test_impossible_max_new_tokens(gen: Generator, max_new_tokens: int) -> None:
    with pytest.raises(GenerationError, match="max_new_tokens"):
        gen.generate("hello", max_new_tokens)


def test_invalid_sampling_fails_before_streaming(gen: Generator) -> None:
    with pytest.raises(GenerationError, match="top_p"):
        gen.stream("hello", 5, SamplingParams(top_p=0.0))


def test_loads_the_latest_checkpoint_of_a_run_directory(tmp_path: Path, random_ckpt: Path, gen: Generator) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_0000010").symlink_to(random_ckpt, target_is_directory=True)
    (run / "checkpoints" / "latest").write_text("step_0000010\n")
    from_run = Generator.from_checkpoint(run, device="cpu")
    assert from_run.generate("Hello", 10)[0].token_ids == gen.generate("Hello", 10)[0].token_ids


def test_checkpoint_without_tokenizer(tmp_path: Path) -> None:
    cfg = tiny_config()
    ckpt = save_model_checkpoint(tmp_path / "ckpt", Transformer(cfg))
    with pytest.raises(CheckpointError, match="tokenizer"):
        Generator.from_checkpoint(ckpt, device="cpu")


def test_model_rows_beyond_the_tokenizer_are_never_generated(tmp_path: Path, tokenizer_dir: Path, tokenizer) -> None:
    cfg = tiny_config(vocab_size=tokenizer.vocab_size + 60)
    model = Transformer(cfg)
    randomize(model, seed=3)
    with torch.no_grad():
        model.output.weight[tokenizer.vocab_size:] *= 50  # make the unused rows the most likely
    g = Generator(model.eval(), tokenizer)
    for done in g.generate(PROMPTS, 20, SamplingParams(temperature=2.0)):
        assert max(done.token_ids, default=0) < tokenizer.vocab_size


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_cuda_graph_decode_matches_eager(random_ckpt: Path) -> None:
    eager = Generator.from_checkpoint(random_ckpt, device="cuda", dtype="fp32")
    compiled = Generator.from_checkpoint(random_ckpt, device="cuda", dtype="fp32", compile=True)
    ids = [eager.encode(p) for p in PROMPTS]
    for _ in range(2):  # the second call replays the captured graphs
        assert compiled.generate_ids(ids, 30) == eager.generate_ids(ids, 30)
        assert compiled.generate_ids(ids[:1], 30) == eager.generate_ids(ids[:1], 30)
    assert compiled.step.compile  # it did not fall back to eager
