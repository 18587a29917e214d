"""Static KV cache: prefill + decode equals the full forward; padding masks; lifecycle and limits."""

import pytest
import torch

TOL = 1e-5  # fp32, max abs difference of logits
KV_HEADS = pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _tokens(batch: int, length: int, vocab: int = 101, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@KV_HEADS
@pytest.mark.parametrize("tensor_pos", [False, True], ids=["int_pos", "tensor_pos"])
@torch.no_grad()
def test_prefill_then_decode_equals_full_forward(make_model, n_kv_heads, tensor_pos):
    model = make_model(n_kv_heads=n_kv_heads)
    tokens = _tokens(2, 20)
    full = model(tokens)
    model.setup_cache(batch_size=2, max_len=24)
    prefill = 6
    start = torch.tensor(0) if tensor_pos else 0
    logits = [model(tokens[:, :prefill], start_pos=start)]
    for pos in range(prefill, tokens.shape[1]):
        start = torch.tensor(pos) if tensor_pos else pos
        logits.append(model(tokens[:, pos : pos + 1], start_pos=start))
    cached = torch.cat(logits, dim=1)
    assert cached.shape == full.shape
    assert _max_diff(cached, full) <= TOL


@KV_HEADS
@torch.no_grad()
def test_chunked_prefill_equals_full_forward(make_model, n_kv_heads):
    model = make_model(n_kv_heads=n_kv_heads)
    tokens = _tokens(2, 19)
    full = model(tokens)
    model.setup_cache(batch_size=2)  # max_len defaults to max_seq_len
    assert model.cache_len == model.cfg.max_seq_len
    chunks = [model(tokens[:, i : i + 5], start_pos=i) for i in range(0, 19, 5)]  # 5, 5, 5, 4 tokens
    assert _max_diff(torch.cat(chunks, dim=1), full) <= TOL


@torch.no_grad()
def test_cache_reuse_after_a_longer_generation(make_model):
    # Slots beyond the current position still hold the previous sequence; they must stay invisible.
    model = make_model(n_kv_heads=2)
    model.setup_cache(batch_size=1, max_len=16)
    model(_tokens(1, 16, seed=5), start_pos=0)
    tokens = _tokens(1, 10, seed=6)
    cached = model(tokens[:, :4], start_pos=0)
    for pos in range(4, 10):
        step = model(tokens[:, pos : pos + 1], start_pos=torch.tensor(pos))
        cached = torch.cat([cached, step], dim=1)
    model.clear_cache()
    assert _max_diff(cached, model(tokens)) <= TOL


@KV_HEADS
@pytest.mark.parametrize("tensor_pos", [False, True], ids=["int_pos", "tensor_pos"])
@torch.no_grad()
def test_left_padding_with_key_mask_matches_unpadded(make_model, n_kv_heads, tensor_pos):
    model = make_model(n_kv_heads=n_kv_heads)
    lengths, pad_to, total = [9, 6], 9, 14  # row 1 is left-padded by 3 slots
    seqs = [_tokens(1, total - pad_to + n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    references = [model(s[None]) for s in seqs]  # unpadded, no cache

    prompts = torch.zeros(2, pad_to, dtype=torch.long)
    key_mask = torch.ones(2, 16, dtype=torch.bool)
    for i, n in enumerate(lengths):
        prompts[i, pad_to - n :] = seqs[i][:n]
        key_mask[i, : pad_to - n] = False
    model.setup_cache(batch_size=2, max_len=16)
    start = torch.tensor(0) if tensor_pos else 0
    logits = [model(prompts, start_pos=start, key_mask=key_mask)]
    for step in range(total - pad_to):
        pos = pad_to + step
        next_tokens = torch.stack([s[n + step] for s, n in zip(seqs, lengths, strict=True)])[:, None]
        start = torch.tensor(pos) if tensor_pos else pos
        logits.append(model(next_tokens, start_pos=start, key_mask=key_mask))
    logits = torch.cat(logits, dim=1)  # (2, total, vocab)
    assert torch.isfinite(logits).all()  # padding queries see no key, but must not poison the real ones
    for i, n in enumerate(lengths):
        real = logits[i, pad_to - n :]
        assert _max_diff(real, references[i][0]) <= TOL


@KV_HEADS
@torch.no_grad()
def test_key_mask_without_cache_matches_unpadded(make_model, n_kv_heads):
    model = make_model(n_kv_heads=n_kv_heads)
    seq = _tokens(1, 8)
    pad = 4
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), seq], dim=1)
    key_mask = torch.tensor([[False] * pad + [True] * 8])
    out = model(padded, key_mask=key_mask)
    assert _max_diff(out[:, pad:], model(seq)) <= TOL
    assert _max_diff(model(padded)[:, pad:], model(seq)) > 1e-3  # the mask is what makes them equal


@torch.no_grad()
def test_clear_cache_removes_it_and_cache_is_never_saved(make_model):
    model = make_model()
    keys_before = set(model.state_dict())
    model.setup_cache(batch_size=2, max_len=8)
    assert model.cache_len == 8
    assert all(layer.attention.kv_cache is not None for layer in model.layers)
    assert any("kv_cache" in name for name, _ in model.named_buffers())
    assert set(model.state_dict()) == keys_before  # the cache never reaches a checkpoint
    model.load_state_dict(make_model(seed=3).state_dict())  # strict load works with a cache present
    model.clear_cache()
    assert model.cache_len is None
    assert all(layer.attention.kv_cache is None for layer in model.layers)
    assert not any("kv_cache" in name for name, _ in model.named_buffers())
    assert set(model.state_dict()) == keys_before


def test_cache_dtype_and_shape(make_model):
    model = make_model(n_kv_heads=2)
    model.setup_cache(batch_size=3, max_len=10, dtype=torch.bfloat16)
    cache = model.layers[0].attention.kv_cache
    assert cache.k.shape == cache.v.shape == (3, 2, 10, model.cfg.head_dim)
    assert cache.k.dtype == torch.bfloat16


def test_limits_raise_value_error(make_model):
    model = make_model(max_seq_len=16)
    with pytest.raises(ValueError, match="limit of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly max_seq_len is fine
    with pytest.raises(ValueError, match="max_seq_len"):
        model.setup_cache(batch_size=1, max_len=17)
    with pytest.raises(ValueError, match="cache length"):
        model.setup_cache(batch_size=1, max_len=0)
    model.setup_cache(batch_size=1, max_len=8)
    with pytest.raises(ValueError, match="limit of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    model(torch.zeros(1, 6, dtype=torch.long), start_pos=0)
    with pytest.raises(ValueError, match="limit of 8"):
        model(torch.zeros(1, 3, dtype=torch.long), start_pos=6)
    model(torch.zeros(1, 2, dtype=torch.long), start_pos=6)  # fills the last slot exactly


@pytest.mark.parametrize("cached", [False, True], ids=["no_cache", "cache"])
@torch.no_grad()
def test_padding_never_leaves_a_query_with_no_visible_key(make_model, monkeypatch, cached):
    # An all-masked softmax row is NaN on some kernels; the NaN would then leak into real tokens' values.
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    model = make_model()
    key_mask = torch.tensor([[False] * 5 + [True] * 3, [True] * 8])
    if cached:
        model.setup_cache(batch_size=2, max_len=8)
    model(torch.zeros(2, 6, dtype=torch.long), key_mask=key_mask)
    if cached:
        model(torch.zeros(2, 1, dtype=torch.long), start_pos=torch.tensor(6), key_mask=key_mask)
    assert len(masks) == model.cfg.n_layers * (2 if cached else 1)
    for mask in masks:
        assert mask is not None and mask.dtype == torch.bool
        assert mask.any(dim=-1).all()
