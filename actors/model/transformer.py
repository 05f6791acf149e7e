"""Decoder-only transformer of the Llama/InternLM2 family.

Parameter names match `transformers.LlamaForCausalLM` one to one, so a checkpoint is a plain
`model.safetensors` with no renaming, and peft target names (q_proj, v_proj, ...) are the familiar ones.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from actors.model.config import ModelConfig
from kernels import linear_cross_entropy, linear_token_losses, rms_norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """RoPE in the Llama convention: rotate_half over two halves of head_dim (not interleaved pairs).

    Scaling as HF's `rope_scaling`: "linear" divides the frequencies by `factor`; "dynamic" (NTK, InternLM2.5)
    keeps them until a forward's longest position passes `max_positions`, then raises the base to
    theta * (factor * seq_len / max_positions - (factor - 1)) ** (hd / (hd - 2)) for that forward (HF's
    `_compute_dynamic_ntk_parameters`, with seq_len = max(positions) + 1 over the batch, as HF takes it)."""

    def __init__(self, head_dim: int, theta: float, rope_type: str = "default", factor: float = 1.0,
                 max_positions: int = 0):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.rope_type, self.factor, self.max_positions = rope_type, factor, max_positions
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, theta: float | None = None) -> torch.Tensor:
        base = self.theta if theta is None else theta
        inv = 1.0 / (base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        return inv / self.factor if self.rope_type == "linear" else inv

    def dynamic_inv_freq(self, seq_len: int) -> torch.Tensor:
        """The "dynamic" frequencies for a sequence of `seq_len` positions (the plain ones up to max_positions)."""
        seq_len, d = max(seq_len, self.max_positions), self.head_dim
        base = self.theta * ((self.factor * seq_len / self.max_positions) - (self.factor - 1)) ** (d / (d - 2))
        return self._inv_freq(base)

    def reset_buffers(self) -> None:
        """Recompute the frequencies after a meta-device model is materialised (they are not in checkpoints)."""
        with torch.no_grad():
            self.inv_freq.copy_(self._inv_freq())

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if self.rope_type == "dynamic" and positions.numel():
            seq_len = int(positions.max()) + 1
            if seq_len > self.max_positions:
                inv_freq = self.dynamic_inv_freq(seq_len).to(inv_freq.device)
        freqs = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hd); cos/sin: (B, T, hd) -> broadcast over heads
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class AttentionBackend(Protocol):
    """Attention over storage the caller owns (the serving engine's paged KV cache).

    `attend(layer, q, k, v)` gets the new tokens' rotated queries (N, nh, hd), keys and values (N, nkv, hd) of one
    layer, stores the keys/values, and returns each token's attention output (N, nh, hd) over its own sequence."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=False)
        # one (q|k|v) projection for the `attention=` path, x -> (N, (nh + 2 nkv) hd): set only on the serving
        # engine's own copy of a model (actors.engine.runner.inference_model, which also adds adapters there);
        # a model never fuses itself
        self.qkv: nn.Module | None = None

    def forward(self, x, cos, sin, attn_mask: torch.Tensor | None = None,
                attention: "AttentionBackend | None" = None):
        B, T, _ = x.shape
        if attention is not None:  # tokens of many sequences flattened; the backend owns their KV storage
            N = B * T
            if self.qkv is not None:
                q, k, v = self.qkv(x).split([self.nh * self.hd, self.nkv * self.hd,
                                                              self.nkv * self.hd], dim=-1)
            else:
                q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
            q = q.view(N, -1, self.hd)  # (N, nh, hd)
            k = k.view(N, -1, self.hd)  # (N, nkv, hd)
            v = v.view(N, -1, self.hd)
            c, s = cos.reshape(N, 1, self.hd), sin.reshape(N, 1, self.hd)  # broadcast over heads
            q, k = q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
            out = attention.attend(self.layer_idx, q, k, v)  # (N, nh, hd)
            return self.o_proj(out.reshape(B, T, -1))
        # -1 heads: under tensor parallelism a rank holds nh / tp query and nkv / tp key/value heads
        q = self.q_proj(x).view(B, T, -1, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, -1, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, -1, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # kv head j serves query heads j*rep .. j*rep+rep-1 (HF repeat_kv), inside SDPA: repeating K/V costs a
        # copy per layer (a training step of the 135M model: 79 vs 62 ms per layer)
        gqa = q.shape[1] != k.shape[1]
        if attn_mask is not None:  # bool, True = attend (packed samples, document masks, tree layouts)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(B, T, -1)  # (B, T, nh*hd)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up: nn.Module | None = None  # (gate|up) in one projection: likewise, the engine's copy only

    def forward(self, x):
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask=None, attention=None):
        # extras as keywords, and only when set: tensor parallelism prepares the positional inputs (x, cos, sin)
        extra = {k: v for k, v in (("attn_mask", attn_mask), ("attention", attention)) if v is not None}
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, **extra)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        # a dict keyed by layer index: a pipeline stage deletes the layers it does not own and the rest keep their
        # checkpoint names (model.layers.7...)
        self.layers = nn.ModuleDict({str(i): DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)})
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_type, cfg.rope_factor,
                                          cfg.max_position_embeddings)


class Transformer(nn.Module):
    """`forward(input_ids, positions=None, attn_mask=None, ...) -> logits (B, T, vocab)`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.sequence_parallel = 1  # tensor-parallel degree splitting the sequence between blocks (apply_tp)
        self.tie_weights()
        self.reset_parameters()

    def tie_weights(self) -> None:
        """The head shares the embedding matrix (when the config ties them and this module holds both: a pipeline
        stage may hold one). Again after anything that re-creates parameters (`to_empty`, tensor parallel)."""
        if self.config.tie_word_embeddings and self.lm_head is not None and self.model.embed_tokens is not None:
            self.lm_head.weight = self.model.embed_tokens.weight

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            std = init_std(self.config, name, p.dim())
            if std is None:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None,
                logits_mask: torch.Tensor | None = None, attention: "AttentionBackend | None" = None,
                targets: torch.Tensor | None = None, reduction: str = "sum") -> torch.Tensor:
        """Logits (B, T, vocab); with a bool `logits_mask` (B, T), only the selected positions' logits (N, vocab)
        in row-major order: SFT trains on ~25% of positions, and the 49152-wide vocabulary projection and its
        log-softmax are ~30% of a step for a 135M model when computed everywhere.

        Without `attention`, each row attends causally over itself (SDPA), or as a bool `attn_mask` (B|1, 1, T, T)
        allows. With `attention` (the serving engine's seam) the input is (1, N) tokens of many sequences with their
        own `positions`, and each layer hands its rotated q/k/v to `attention.attend`, which owns the KV storage.

        With `targets` (aligned with the positions whose logits would be returned: (B, T), or (N,) with
        `logits_mask`; -100 = not trained) the result is the summed cross-entropy instead, through the fused
        chunked projection + loss (the 49152-wide logits are never whole in memory); with reduction="none" each
        position's loss (-log p(target)), 0 where not trained: sequence log-probabilities for preference losses."""
        B, T = input_ids.shape[:2]
        if self.model.embed_tokens is None:  # hidden states of a pipeline stage: sequence-parallel holds T / tp
            T *= self.sequence_parallel
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        # a pipeline stage without the embedding gets the previous stage's hidden states (B, T, d)
        x = self.model.embed_tokens(input_ids) if self.model.embed_tokens is not None else input_ids  # (B, T, d)
        cos, sin = self.model.rotary_emb(positions, x.dtype)
        for layer in self.model.layers.values():
            x = layer(x, cos, sin, attn_mask, attention)
        if self.lm_head is None:  # a pipeline stage before the last: hidden states go on
            return x
        x = self.model.norm(x)
        if logits_mask is not None:
            x = x[logits_mask]  # (N, d)
        if targets is not None:
            from torch.distributed.tensor import DTensor

            if not isinstance(self.lm_head.weight, DTensor):  # a vocab-sharded head (TP) takes the plain path
                fused = linear_cross_entropy if reduction == "sum" else linear_token_losses
                return fused(x.reshape(-1, x.shape[-1]), self.lm_head.weight, targets.reshape(-1))
            logits = self.lm_head(x)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                   reduction=reduction)
        return self.lm_head(x)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def init_std(cfg: ModelConfig, name: str, ndim: int) -> float | None:
    """The init of parameter `name`: N(0, std) for matrices, with residual-branch outputs scaled by 1/sqrt(2L)
    (GPT-2) so the residual stream does not grow with depth; None = ones (norm gains)."""
    if ndim < 2:
        return None
    std = cfg.initializer_range
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        std /= math.sqrt(2 * cfg.num_hidden_layers)
    return std


def trained_positions(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Bool (B, T): positions whose next token is trained (the `logits_mask` of a sparse loss)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != ignore_index
    return mask
