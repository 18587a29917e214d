"""OneTokenStep (the eager decode default) against the model's full forward: same logits, same cache, same tokens."""

from __future__ import annotations

import pytest
import torch

from inference.decode import decode_one_token, prefill
from inference.one_token import OneTokenStep, decode_layout
from model import Transformer
from tests.helpers import randomize, sdpa_with_transposed_output
from tests.inference.conftest import tiny_config

PROMPT_LEN, STEPS = 12, 10


def random_model(**overrides) -> Transformer:
    model = Transformer(tiny_config(**overrides)).eval()
    randomize(model, seed=3)
    return model


def run(model: Transformer, step, tokens: torch.Tensor, key_mask: torch.Tensor | None) -> tuple[list, list]:
    """Greedy continuation of tokens (B, T) by STEPS steps through `step`: (per-step logits, final k/v caches)."""
    B, T = tokens.shape
    model.setup_cache(B, T + STEPS)
    out = []
    with torch.inference_mode():
        logits = prefill(model, tokens, key_mask)
        for i in range(STEPS):
            out.append(logits)
            logits = step(model, logits.argmax(-1)[:, None], T + i, key_mask)
    caches = [(layer.attention.kv_cache.k.clone(), layer.attention.kv_cache.v.clone()) for layer in model.layers]
    return out, caches


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 4}, {"n_kv_heads": 1}, {"tie_embeddings": True}],
                         ids=["gqa", "mha", "mqa", "tied"])
def test_logits_and_cache_equal_the_full_forward(overrides: dict) -> None:
    model = random_model(**overrides)
    tokens = torch.randint(0, model.cfg.vocab_size, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
    fast_logits, fast_cache = run(model, OneTokenStep(), tokens, None)
    full_logits, full_cache = run(model, decode_one_token, tokens, None)
    for fast, full in zip(fast_logits, full_logits, strict=True):
        torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
        assert torch.equal(fast.argmax(-1), full.argmax(-1))
    for (fk, fv), (k, v) in zip(fast_cache, full_cache, strict=True):
        torch.testing.assert_close(fk, k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fv, v, rtol=1e-5, atol=1e-5)


def test_left_padded_rows_follow_their_key_mask() -> None:
    """Row 1 is padded by 5 slots: with the mask both paths agree, and the padding changes nothing for row 1."""
    model = random_model()
    tokens = torch.randint(0, model.cfg.vocab_size, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    key_mask = torch.ones(2, PROMPT_LEN + STEPS, dtype=torch.bool)
    key_mask[1, :5] = False
    fast_logits, _ = run(model, OneTokenStep(), tokens, key_mask)
    full_logits, _ = run(model, decode_one_token, tokens, key_mask)
    alone_logits, _ = run(model, OneTokenStep(), tokens[1:, 5:], None)
    for fast, full, alone in zip(fast_logits, full_logits, alone_logits, strict=True):
        torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast[1:], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 1}], ids=["gqa", "mqa"])
@pytest.mark.parametrize("padded", [False, True], ids=["no-mask", "key-mask"])
def test_decode_takes_sdpa_output_in_any_layout(monkeypatch, overrides: dict, padded: bool) -> None:
    """CUDA's attention kernels return strided outputs, the CPU's contiguous ones: both decode paths must give
    the same logits either way."""
    model = random_model(**overrides)
    tokens = torch.randint(0, model.cfg.vocab_size, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(2))
    key_mask = torch.ones(2, PROMPT_LEN + STEPS, dtype=torch.bool)
    key_mask[1, :3] = False
    key_mask = key_mask if padded else None
    expected = {name: run(model, step, tokens, key_mask)[0]
                for name, step in (("one token", OneTokenStep()), ("full", decode_one_token))}
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa_with_transposed_output)
    for name, step in (("one token", OneTokenStep()), ("full", decode_one_token)):
        for got, want in zip(run(model, step, tokens, key_mask)[0], expected[name], strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_bf16_model_matches_its_full_forward() -> None:
    """RoPE is computed in fp32 and cast back, as model.rope.apply_rope does: bf16 logits agree closely."""
    model = random_model().to(torch.bfloat16)
    tokens = torch.randint(0, model.cfg.vocab_size, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(2))
    fast_logits, _ = run(model, OneTokenStep(), tokens, None)
    full_logits, _ = run(model, decode_one_token, tokens, None)
    for fast, full in zip(fast_logits, full_logits, strict=True):
        torch.testing.assert_close(fast.float(), full.float(), rtol=0, atol=0)


def test_position_outside_the_cache_is_an_error() -> None:
    model = random_model()
    model.setup_cache(1, 8)
    with torch.inference_mode(), pytest.raises(ValueError, match="position 8 is outside the KV cache"):
        OneTokenStep()(model, torch.zeros(1, 1, dtype=torch.long), 8)
    model.clear_cache()
    with torch.inference_mode(), pytest.raises(ValueError, match="outside the KV cache"):
        OneTokenStep()(model, torch.zeros(1, 1, dtype=torch.long), 0)


def test_a_model_with_forward_hooks_decodes_through_its_modules() -> None:
    """Weights read directly would skip what a hook does (FSDP all-gathers sharded weights in one): a hooked model
    takes the full forward, so its logits are the full forward's with the hook, not the plain step's."""
    from inference.decode import DecodeStep, decode_one_token

    model = random_model()
    token = torch.tensor([[5]])

    def step(fn):
        model.setup_cache(1, 16)
        try:
            return fn(model, token, 0, None)
        finally:
            model.clear_cache()

    plain = step(DecodeStep())
    handle = model.output.register_forward_hook(lambda module, args, out: out * 2)  # OneTokenStep reads its weight
    try:
        hooked = step(DecodeStep())
        expected = step(decode_one_token)
    finally:
        handle.remove()
    torch.testing.assert_close(hooked, expected, rtol=0, atol=0)
    assert not torch.allclose(hooked, plain)


@pytest.mark.parametrize("overrides", [{"tie_embeddings": True}, {"n_kv_heads": 1}], ids=["tied", "mqa"])
def test_decode_layout_keeps_values_logits_and_saved_files(tmp_path, overrides: dict) -> None:
    """decode_layout puts q/k/v and w1/w3 side by side in transposed buffers and transposes the head, keeping
    every value, shape, name and the tie; the step then uses the fused matmuls, decodes what the full forward
    does (batch 2, so the column slices are not contiguous) and what the model decoded before, and a checkpoint
    saved afterwards holds the same tensors as one saved before."""
    from safetensors.torch import load_file

    from inference.one_token import side_by_side
    from model.checkpoint import WEIGHTS, save_model_checkpoint

    model = random_model(**overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_model_checkpoint(tmp_path / "before", model)
    tokens = torch.randint(0, model.cfg.vocab_size, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(4))
    plain_logits, _ = run(model, OneTokenStep(), tokens, None)
    step = OneTokenStep()
    step._prepare(model)
    assert all(layer.wqkv is None and layer.w13 is None for layer in step._layers)

    decode_layout(model)
    assert model.state_dict().keys() == before.keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    attn, ffn = model.layers[0].attention, model.layers[0].feed_forward
    qkv = side_by_side([attn.wq.weight.t(), attn.wk.weight.t(), attn.wv.weight.t()])
    assert qkv is not None and qkv.is_contiguous() and qkv.shape == (model.cfg.dim, attn.wq.out_features + 2 *
                                                                    attn.wk.out_features)
    assert side_by_side([ffn.w1.weight.t(), ffn.w3.weight.t()]) is not None
    assert side_by_side([ffn.w1.weight.t(), attn.wq.weight.t()]) is None  # different buffers
    assert model.output.weight.t().is_contiguous()
    assert model.output.weight is model.tok_embeddings.weight or not model.cfg.tie_embeddings
    step._prepare(model)
    assert all(layer.wqkv is not None and layer.w13 is not None for layer in step._layers)

    fast_logits, fast_cache = run(model, OneTokenStep(), tokens, None)
    full_logits, full_cache = run(model, decode_one_token, tokens, None)
    for fast, full, plain in zip(fast_logits, full_logits, plain_logits, strict=True):
        torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
        assert torch.equal(fast.argmax(-1), plain.argmax(-1))
    for (fk, fv), (k, v) in zip(fast_cache, full_cache, strict=True):
        torch.testing.assert_close(fk, k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fv, v, rtol=1e-5, atol=1e-5)
    save_model_checkpoint(tmp_path / "after", model)
    saved, again = load_file(tmp_path / "before" / WEIGHTS), load_file(tmp_path / "after" / WEIGHTS)
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)


def test_generator_from_checkpoint_uses_the_transposed_layout_on_cpu(memorized_ckpt) -> None:
    """The CLI's loader applies decode_layout; its greedy tokens are those of the model as saved."""
    from inference import Generator
    from model.checkpoint import load_model

    gen = Generator.from_checkpoint(memorized_ckpt, device="cpu")
    ffn = gen.model.layers[0].feed_forward
    assert ffn.w1.weight.t().storage_offset() + ffn.w1.out_features == ffn.w3.weight.t().storage_offset()
    as_saved = Generator(load_model(memorized_ckpt, "cpu", torch.float32)[0], gen.tokenizer)
    assert as_saved.model.layers[0].feed_forward.w1.weight.is_contiguous()
    prompts = [gen.encode(p) for p in ("The", "a b", "Hello")]
    assert gen.generate_ids(prompts, 24) == as_saved.generate_ids(prompts, 24)
