"""The peer of benchmarks/speedrun.py: nanoGPT's documented CPU recipe, rebuilt on transformers' GPT2LMHeadModel.

nanoGPT's README trains its Shakespeare character model on a laptop CPU with: character-level vocabulary, 4 layers,
4 heads, width 128, block 64, batch 12, 2000 iterations, dropout 0, lr decay over the 2000 iterations; its
shakespeare_char config adds lr 1e-3 falling to min_lr 1e-4, 100 warmup iterations, beta2 0.99, weight decay 0.1
(on the 2-D weights), gradient clipping at 1.0, fp32 on the CPU. GPT2LMHeadModel is the architecture nanoGPT
implements (learned positions, pre-LayerNorm blocks, GELU MLP of 4x width, output head tied to the embedding); it
keeps biases, where nanoGPT's default drops them. Batches are random windows of the train text, as in nanoGPT.
The run stops after 2000 iterations or when the time budget is spent, whichever comes first.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from heldout import heldout_nats

BLOCK, BATCH, ITERS = 64, 12, 2000
LR, MIN_LR, WARMUP, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0


@dataclass
class PeerRun:
    """A finished run: (iteration, training seconds, weights) snapshots, the last one final."""

    vocab: list[str]
    snapshots: list[tuple[int, float, dict]] = field(default_factory=list)


def build_model(vocab_size: int) -> torch.nn.Module:
    """The recipe's GPT-2: 4 x 128, 4 heads, 64 positions, exact GELU, no dropout, tied head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_positions=BLOCK, n_embd=128, n_layer=4, n_head=4,
                     activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    return GPT2LMHeadModel(cfg)


def lr_at(it: int) -> float:
    """Linear warmup over WARMUP iterations, then a half cosine from LR to MIN_LR at iteration ITERS."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    progress = min(1.0, (it - WARMUP) / (ITERS - WARMUP))
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def train_peer(train_text: str, vocab: list[str], seconds: float, snapshot_every: int, seed: int = 1337) -> PeerRun:
    """Train under the recipe for at most `seconds` of wall-clock time; snapshot the weights every
    `snapshot_every` iterations and at the end."""
    torch.manual_seed(seed)
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in train_text], dtype=torch.long)
    model = build_model(len(vocab)).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": rest, "weight_decay": 0.0}], lr=LR, betas=BETAS)
    run = PeerRun(vocab)
    start = time.monotonic()
    it, elapsed = 0, 0.0
    while it < ITERS and elapsed < seconds:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        offsets = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([data[o : o + BLOCK] for o in offsets])
        y = torch.stack([data[o + 1 : o + 1 + BLOCK] for o in offsets])
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        elapsed = time.monotonic() - start
        if it % snapshot_every == 0:
            run.snapshots.append((it, elapsed, copy.deepcopy(model.state_dict())))
    if not run.snapshots or run.snapshots[-1][0] != it:
        run.snapshots.append((it, elapsed, copy.deepcopy(model.state_dict())))
    return run


def score_peer(run: PeerRun, snapshot: dict, text: str) -> tuple[float, int]:
    """(nats, UTF-8 bytes predicted) of the held-out text under a snapshot: every character but the first."""
    index = {c: i for i, c in enumerate(run.vocab)}
    model = build_model(len(run.vocab))
    model.load_state_dict(snapshot)
    model.eval()
    nats, _ = heldout_nats(lambda x: model(input_ids=x).logits, [index[c] for c in text], BLOCK, batch_size=64)
    return nats, len(text.encode("utf-8")) - len(text[0].encode("utf-8"))
