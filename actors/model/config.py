"""Model shapes by name. Llama/InternLM2 family: RMSNorm, RoPE, grouped-query attention, SwiGLU."""
from __future__ import annotations

from dataclasses import dataclass, replace

from actors.common.config import check


ROPE_TYPES = ("default", "linear", "dynamic")


@dataclass
class ModelConfig:
    name: str = "debug"
    vocab_size: int = 4096
    # debug: 2.4M params. On 2 CPU cores a 4-minute pretrain sees ~1.5M tokens, far below the ~20 tokens
    # per parameter a compute-optimal model wants: at equal wall time this shape reached a lower val loss
    # than hidden 256 (4.93 vs ~5.2 nats after 180 s, 1 core) because it trains on ~1.6x more tokens.
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 0                      # 0: hidden_size // num_attention_heads
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    # RoPE scaling as HF's `rope_scaling`: "default" (none), "linear" (positions / factor) or "dynamic" (NTK: the
    # base grows with the sequence once it passes max_position_embeddings; InternLM2.5 uses factor 2.0)
    rope_type: str = "default"
    rope_factor: float = 1.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int = 0
    pad_token_id: int = 0

    def __post_init__(self):
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings"):
            check(getattr(self, k) > 0, f"model.{k}", f"must be > 0, got {getattr(self, k)}")
        check(self.num_attention_heads % self.num_key_value_heads == 0, "model.num_key_value_heads",
              f"must divide num_attention_heads={self.num_attention_heads} (grouped-query attention), "
              f"got {self.num_key_value_heads}")
        if self.head_dim == 0:
            check(self.hidden_size % self.num_attention_heads == 0, "model.hidden_size",
                  f"must be divisible by num_attention_heads={self.num_attention_heads} or set model.head_dim")
            self.head_dim = self.hidden_size // self.num_attention_heads
        check(self.rope_type in ROPE_TYPES, "model.rope_type", f"must be one of {ROPE_TYPES}, got {self.rope_type!r}")
        check(self.rope_factor >= 1.0, "model.rope_factor", f"must be >= 1.0, got {self.rope_factor}")
        check(self.head_dim % 2 == 0, "model.head_dim", f"must be even for RoPE, got {self.head_dim}")
        check(0 <= self.eos_token_id < self.vocab_size, "model.eos_token_id",
              f"must be a token id < vocab_size={self.vocab_size}")

    def num_params(self, include_embeddings: bool = True) -> int:
        d, f, L, hd = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.head_dim
        attn = d * hd * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        per_layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return L * per_layer + d + (emb if include_embeddings else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (6N + attention), as in the PaLM/Chinchilla MFU accounting."""
        n = self.num_params(include_embeddings=False)
        return 6 * n + 12 * self.num_hidden_layers * self.hidden_size * seq_len


_REGISTRY: dict[str, ModelConfig] = {
    # 2.4M params at vocab 4096 (1.7M at the demo's 320): trains to a useful loss in minutes on 2 CPU cores.
    "debug": ModelConfig(),
    # GPT-3 small shape with GQA.
    "125m": ModelConfig(name="125m", vocab_size=32000, hidden_size=768, intermediate_size=2048,
                        num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                        max_position_embeddings=2048, tie_word_embeddings=True),
    # TinyLlama-1.1B shape.
    "1b": ModelConfig(name="1b", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                      num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                      max_position_embeddings=2048, tie_word_embeddings=False),
    # InternLM2-7B shape (exported as LlamaForCausalLM, wqkv unpacked).
    "internlm2-7b": ModelConfig(name="internlm2-7b", vocab_size=92544, hidden_size=4096, intermediate_size=14336,
                                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                max_position_embeddings=32768, rope_theta=1_000_000.0, tie_word_embeddings=False,
                                bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "llama3-8b": ModelConfig(name="llama3-8b", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             max_position_embeddings=8192, rope_theta=500_000.0, tie_word_embeddings=False,
                             bos_token_id=128000, eos_token_id=128001, pad_token_id=128001),
}


def list_configs() -> list[str]:
    return sorted(_REGISTRY)


def get_config(name: str, **overrides) -> ModelConfig:
    if name not in _REGISTRY:
        raise ValueError(f"model.name: unknown model {name!r}; choose one of {list_configs()}")
    return replace(_REGISTRY[name], **overrides)
