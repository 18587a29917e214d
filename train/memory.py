"""A rough estimate of the memory one GPU needs for training, printed when training starts.

It is an estimate, not a measurement: it counts the big tensors (fp32 weights, gradients and AdamW moments, the
weights FSDP gathers, saved activations, logits) and ignores the CUDA context (~0.5-1 GB), allocator
fragmentation, temporary buffers inside kernels, communication buffers and torch.compile workspaces. Expect the
real peak within roughly +-30%; use it to choose parallel / micro_batch_size / activation_checkpointing before
launching, then read the real peak from nvidia-smi or benchmarks/train_throughput.py.

Byte counts per parameter (N = parameters, W = data-parallel ranks):
  weights   4N        fp32 master weights (bf16 runs use autocast or FSDP's bf16 copies, not bf16 masters)
  gradients 4N        fp32
  AdamW     8N        exp_avg and exp_avg_sq, fp32
  FSDP divides all three by W. DDP adds 4N of gradient buckets. FSDP adds the parameters it gathers (the root
  unit plus about two blocks, in the compute dtype, and as much again for their gradients) and, with gradient
  accumulation, the unsharded fp32 gradients it keeps between micro batches (4N: see docs/scaling.md).
Activations per layer and token, without checkpointing: two fp32 residual-stream copies (8 * dim bytes) plus,
in the compute dtype, about 5 * dim + 2 * kv_dim (attention inputs/outputs) + 4 * ffn_hidden (SwiGLU). With
activation checkpointing a layer keeps only its fp32 input (4 * dim) and one layer's full set is live during
its recomputation. Logits: tokens * vocab * (compute bytes + 8) for the fp32 copy and its gradient in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from train.config import Config

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes per GPU (per process on CPU), by kind."""

    params: int
    world_size: int
    parallel: str
    weights: int
    gradients: int
    optimizer: int
    working: int  # FSDP gathered parameters and unsharded gradients, or DDP gradient buckets
    activations: int
    logits: int
    checkpointing: bool
    tokens: int  # per micro batch

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.working + self.activations + self.logits

    def summary(self) -> str:
        """Two lines for the start of training."""
        parts = [f"weights {_size(self.weights)}", f"grads {_size(self.gradients)}",
                 f"AdamW {_size(self.optimizer)}" + (f" (sharded over {self.world_size})" if self.parallel == "fsdp"
                                                     else "")]
        if self.parallel != "none":
            parts.append(f"{'FSDP gathered' if self.parallel == 'fsdp' else 'DDP buckets'} {_size(self.working)}")
        ac = "on" if self.checkpointing else "off"
        return (
            f"memory estimate per device (rough, +-30%): ~{_size(self.total)} = {' + '.join(parts)}\n"
            f"  + activations {_size(self.activations)} ({self.tokens} tokens per micro batch, activation "
            f"checkpointing {ac}) + logits {_size(self.logits)}"
        )


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def estimate_memory(cfg: Config, world_size: int, parallel: str, precision: str) -> MemoryEstimate:
    """Estimate per-GPU training memory for `cfg` on `world_size` ranks (parallel and precision resolved:
    none/ddp/fsdp and fp32/bf16/fp16)."""
    m, t = cfg.model, cfg.train
    # Counted by arithmetic, not on a meta model: a config far too large for any machine (the case the training
    # pre-flight check refuses) can have tensors whose byte size overflows torch's storage computation.
    n = m.num_params()
    per_block = m.block_params()
    root = n - m.n_layers * per_block
    compute_bytes = 4 if precision == "fp32" else 2
    accum = cfg.grad_accum_steps(world_size)

    shards = world_size if parallel == "fsdp" else 1
    weights, gradients, optimizer = 4 * n // shards, 4 * n // shards, 8 * n // shards
    if parallel == "fsdp":
        gathered = root + 2 * per_block
        working = 2 * gathered * compute_bytes  # gathered weights and their unsharded gradients
        if accum > 1:
            working += 4 * n  # unsharded fp32 gradients kept between micro batches (no reduce-scatter)
    elif parallel == "ddp":
        working = 4 * n
    else:
        working = 0

    tokens = t.micro_batch_size * t.seq_len
    kv_dim = m.kv_heads * m.head_dim
    full_layer = tokens * (8 * m.dim + compute_bytes * (5 * m.dim + 2 * kv_dim + 4 * m.hidden_dim))
    if t.activation_checkpointing:
        activations = m.n_layers * tokens * 4 * m.dim + full_layer
    else:
        activations = m.n_layers * full_layer
    logits = tokens * m.vocab_size * (compute_bytes + 8)
    return MemoryEstimate(n, world_size, parallel, weights, gradients, optimizer, working, activations, logits,
                          t.activation_checkpointing, tokens)
