"""Model hyperparameters, named as in the Meta Llama reference, and the values derived from them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

ROPE_SCALING_TYPES = ("none", "llama3")


@dataclass
class RopeScaling:
    """RoPE frequency scaling for contexts longer than pretraining: "none" (plain RoPE) or "llama3", the rule of
    Llama 3.1/3.2. llama3 divides the low frequencies (wavelength > original_max_seq_len / low_freq_factor) by
    `factor`, keeps the high ones (wavelength < original_max_seq_len / high_freq_factor) and blends in between.
    The other fields are read only when type is llama3."""

    type: Literal["none", "llama3"] = "none"
    factor: float = 8.0  # how much the low frequencies are slowed down (Llama 3.1: 8, Llama 3.2: 32)
    low_freq_factor: float = 1.0  # wavelengths above original_max_seq_len / low_freq_factor are divided by factor
    high_freq_factor: float = 4.0  # wavelengths below original_max_seq_len / high_freq_factor are left alone
    original_max_seq_len: int = 8192  # context length of pretraining (Hugging Face original_max_position_embeddings)

    def validate(self, prefix: str = "") -> None:
        """Raise ValueError naming the first bad field (names get `prefix`)."""
        if self.type not in ROPE_SCALING_TYPES:
            raise ValueError(f"{prefix}type must be one of {', '.join(ROPE_SCALING_TYPES)}, got {self.type!r}")
        if self.type == "none":
            return
        for name in ("factor", "low_freq_factor", "original_max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{prefix}{name} must be positive, got {getattr(self, name)}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"{prefix}high_freq_factor ({self.high_freq_factor}) must be greater than "
                             f"{prefix}low_freq_factor ({self.low_freq_factor})")


@dataclass
class ModelConfig:
    """Architecture of a Llama-style transformer. Derived sizes are properties, never configured twice."""

    dim: int = 256  # width of the residual stream
    n_layers: int = 4  # number of transformer blocks
    n_heads: int = 8  # query heads
    head_dim: int | None = None  # width of each head; None means dim // n_heads (Llama 3.2 1B/3B set it)
    n_kv_heads: int | None = None  # key/value heads: n_heads = MHA, 1 = MQA, between = GQA; None means n_heads
    vocab_size: int = 4096  # rows of the embedding table; must be >= the tokenizer's vocabulary
    multiple_of: int = 256  # SwiGLU hidden width is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None  # scales the default SwiGLU width (Llama 3 uses 1.3)
    ffn_hidden_dim: int | None = None  # explicit SwiGLU width; overrides the two keys above
    norm_eps: float = 1e-5  # epsilon inside RMSNorm
    rope_theta: float = 10000.0  # RoPE base frequency (Llama 3 uses 500000)
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)  # long-context RoPE scaling (Llama 3.1+)
    max_seq_len: int = 2048  # longest sequence the RoPE tables and the KV cache cover
    tie_embeddings: bool = False  # share the token embedding with the output head
    dropout: float = 0.0  # dropout on attention weights and residual branches (training only)
    init_std: float = 0.02  # std of the normal init; residual output projections get std / sqrt(2 * n_layers)

    def __post_init__(self) -> None:
        # head_dim is the one derived value stored in its field: every module reads cfg.head_dim, and an explicit
        # value (any width, as in Llama 3.2) must stay explicit, so only an absent one is derived here.
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads if self.n_heads > 0 else 0
        if isinstance(self.rope_scaling, dict):  # e.g. ModelConfig(**yaml_dict) outside the config loader
            self.rope_scaling = RopeScaling(**self.rope_scaling)

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of 4*dim (same parameter count as a 4x GELU MLP), scaled, rounded up."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def block_params(self) -> int:
        """Parameters of one transformer block: attention (wq, wk, wv, wo), SwiGLU (w1, w2, w3), two norms."""
        kv_dim = self.kv_heads * self.head_dim
        return 2 * self.dim * self.dim + 2 * self.dim * kv_dim + 3 * self.dim * self.hidden_dim + 2 * self.dim

    def num_params(self) -> int:
        """Parameters of the whole model (a tied head counted once), by arithmetic: no tensor is created, so
        even a config far too large to build (whose sizes overflow torch's storage) can be measured."""
        embeddings = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return embeddings + self.n_layers * self.block_params() + self.dim

    def architecture(self) -> dict:
        """What the weights depend on. Configs with equal architectures can share checkpoints, whatever their
        max_seq_len, dropout, init_std or way of writing the SwiGLU width."""
        return {
            "dim": self.dim, "n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.kv_heads,
            "ffn_hidden_dim": self.hidden_dim, "vocab_size": self.vocab_size, "norm_eps": self.norm_eps,
            "head_dim": self.head_dim, "rope_theta": self.rope_theta, "tie_embeddings": self.tie_embeddings,
            # the llama3 numbers matter only when that scaling is on
            "rope_scaling": asdict(self.rope_scaling) if self.rope_scaling.type != "none" else {"type": "none"},
        }

    def validate(self, prefix: str = "") -> None:
        """Raise ValueError naming the first field that is out of range or inconsistent (names get `prefix`)."""
        p = prefix
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{p}{name} must be positive, got {getattr(self, name)}")
        if self.n_kv_heads is not None and self.n_kv_heads <= 0:
            raise ValueError(f"{p}n_kv_heads must be positive, got {self.n_kv_heads}")
        if self.head_dim <= 0:
            raise ValueError(f"{p}head_dim must be positive, got {self.head_dim}")
        if self.head_dim * self.n_heads != self.dim and self.dim % self.n_heads:
            raise ValueError(f"{p}dim ({self.dim}) must be divisible by {p}n_heads ({self.n_heads})")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"{p}n_heads ({self.n_heads}) must be divisible by {p}n_kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"{p}head_dim ({self.head_dim}, dim / n_heads unless set) must be even for RoPE")
        if self.ffn_hidden_dim is not None and self.ffn_dim_multiplier is not None:
            raise ValueError(f"set {p}ffn_hidden_dim or {p}ffn_dim_multiplier, not both")
        if self.ffn_hidden_dim is not None and self.ffn_hidden_dim <= 0:
            raise ValueError(f"{p}ffn_hidden_dim must be positive, got {self.ffn_hidden_dim}")
        if self.ffn_dim_multiplier is not None and self.ffn_dim_multiplier <= 0:
            raise ValueError(f"{p}ffn_dim_multiplier must be positive, got {self.ffn_dim_multiplier}")
        if self.norm_eps <= 0:
            raise ValueError(f"{p}norm_eps must be positive, got {self.norm_eps}")
        if self.rope_theta <= 0:
            raise ValueError(f"{p}rope_theta must be positive, got {self.rope_theta}")
        self.rope_scaling.validate(prefix=f"{p}rope_scaling.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{p}dropout must be in [0, 1), got {self.dropout}")
        if self.init_std <= 0:
            raise ValueError(f"{p}init_std must be positive, got {self.init_std}")
