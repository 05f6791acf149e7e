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
    """RoPE in the Llama convention: rotate_half over two halves of head_dim (not interleaved pairs)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))

    def reset_buffers(self) -> None:
        """Recompute the frequencies after a meta-device model is materialised (they are not in checkpoints)."""
        with torch.no_grad():
            self.inv_freq.copy_(self._inv_freq())

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq  # (B, T, hd/2)
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


class KVCache:
    """Per-layer key/value tensors of shape (B, n_kv_heads, T_past, head_dim).

    Without `capacity` they grow by concatenation (a plain cache for the plain engine). With `capacity` the
    buffers are allocated once (doubling if outgrown) and each step writes its new positions in place:
    concatenating copies the whole cache every decode step (60 ms of a 200 ms step for 16 rows x 300 tokens
    of a 30-layer model). The paged cache of the continuous-batching engine replaces this behind `update()`.
    """

    def __init__(self, num_layers: int, capacity: int | None = None):
        self.capacity = capacity
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers

    @property
    def length(self) -> int:
        return self.lengths[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, T = self.lengths[layer], k.shape[2]
        if self.capacity is None:
            if self.k[layer] is not None:
                k = torch.cat([self.k[layer], k], dim=2)
                v = torch.cat([self.v[layer], v], dim=2)
            self.k[layer], self.v[layer] = k, v
        else:
            buf = self.k[layer]
            if buf is None or n + T > buf.shape[2]:
                size = max(self.capacity, 2 * (n + T))
                # zeros, not empty: decode attention reads the whole buffer (masked) and 0 * NaN garbage is NaN
                new_k = k.new_zeros(k.shape[0], k.shape[1], size, k.shape[3])
                new_v = v.new_zeros(v.shape[0], v.shape[1], size, v.shape[3])
                if buf is not None:
                    new_k[:, :, :n], new_v[:, :, :n] = self.k[layer][:, :, :n], self.v[layer][:, :, :n]
                self.k[layer], self.v[layer] = new_k, new_v
            self.k[layer][:, :, n:n + T] = k
            self.v[layer][:, :, n:n + T] = v
            k, v = self.k[layer][:, :, :n + T], self.v[layer][:, :, :n + T]
        self.lengths[layer] = n + T
        return k, v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=False)
        self.qkv_weight: torch.Tensor | None = None  # set by Transformer.fuse_projections (inference)

    def forward(self, x, cos, sin, cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                attention: "AttentionBackend | None" = None):
        B, T, _ = x.shape
        if attention is not None:  # tokens of many sequences flattened; the backend owns their KV storage
            N = B * T
            if self.qkv_weight is not None:
                q, k, v = F.linear(x, self.qkv_weight).split([self.nh * self.hd, self.nkv * self.hd,
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
        past = 0
        if cache is not None:
            past = cache.lengths[self.layer_idx]
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, past+T, hd)
        rep = q.shape[1] // k.shape[1]
        if T == 1 and cache is not None:  # one new token per row against its cache (decode)
            if cache.capacity is not None:  # the whole buffers (zeros beyond past + 1, masked): a sliced view
                # would be copied to contiguous memory by every matmul of every step
                k, v = cache.k[self.layer_idx], cache.v[self.layer_idx]  # (B, nkv, capacity, hd)
            out = decode_attention(q, k, v, rep, attn_mask, length=past + 1)  # (B, nh, 1, hd)
            return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        # kv head j serves query heads j*rep .. j*rep+rep-1 (HF repeat_kv), inside SDPA: repeating K/V costs a
        # copy per layer (a training step of the 135M model: 79 vs 62 ms per layer)
        gqa = rep > 1
        if attn_mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        elif T == 1:
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)  # one new token sees every cached one
        elif past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # chunk after a cached prefix: token i sees past + i + 1 keys
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(B, T, -1)  # (B, T, nh*hd)
        return self.o_proj(out)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rep: int,
                     attn_mask: torch.Tensor | None = None, length: int | None = None) -> torch.Tensor:
    """Attention of one query token per row over its cached keys, grouped-query without copying K/V.

    On a CPU, SDPA's flash kernel takes ~5 ms per layer for a (16, 9, 1, 64) query over 300 keys (it is tiled
    for long queries) and repeating K/V for the query heads copies the whole cache every step; two batched
    matmuls over (B, n_kv, rep, .) views do the same work in a fraction of that.
    q: (B, nh, 1, hd); k, v: (B, nkv, S_buf, hd) of which the first `length` (default S_buf) positions are real;
    attn_mask: bool, broadcastable to (B, 1, 1, length), True = attend."""
    B, nh, _, hd = q.shape
    nkv, S = k.shape[1], k.shape[2]
    length = S if length is None else length
    qg = q.reshape(B, nkv, rep, hd)  # query head j*rep + r uses kv head j
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * hd ** -0.5  # (B, nkv, rep, S)
    if attn_mask is not None or length < S:
        m = torch.zeros(attn_mask.shape[0] if attn_mask is not None else 1, S, dtype=torch.bool, device=q.device)
        m[:, :length] = True if attn_mask is None else attn_mask.reshape(attn_mask.shape[0], length)
        scores = scores.masked_fill(~m[:, None, None, :], float("-inf"))  # (B|1, 1, 1, S)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(B, nh, 1, hd)  # (B, nh, 1, hd)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_weight: torch.Tensor | None = None  # set by Transformer.fuse_projections (inference)

    def forward(self, x):
        if self.gate_up_weight is not None:
            gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, attn_mask=None, attention=None):
        # extras as keywords, and only when set: tensor parallelism prepares the positional inputs (x, cos, sin)
        extra = {k: v for k, v in (("cache", cache), ("attn_mask", attn_mask), ("attention", attention))
                 if v is not None}
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
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)


class Transformer(nn.Module):
    """`forward(input_ids, positions=None, cache=None) -> logits (B, T, vocab)`."""

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
                cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                logits_mask: torch.Tensor | None = None, attention: "AttentionBackend | None" = None,
                targets: torch.Tensor | None = None, reduction: str = "sum") -> torch.Tensor:
        """Logits (B, T, vocab); with a bool `logits_mask` (B, T), only the selected positions' logits (N, vocab)
        in row-major order: SFT trains on ~25% of positions, and the 49152-wide vocabulary projection and its
        log-softmax are ~30% of a step for a 135M model when computed everywhere.

        With `attention` (the serving engine's seam) the input is (1, N) tokens of many sequences with their
        own `positions`, and each layer hands its rotated q/k/v to `attention.attend` instead of a `KVCache`.

        With `targets` (aligned with the positions whose logits would be returned: (B, T), or (N,) with
        `logits_mask`; -100 = not trained) the result is the summed cross-entropy instead, through the fused
        chunked projection + loss (the 49152-wide logits are never whole in memory); with reduction="none" each
        position's loss (-log p(target)), 0 where not trained: sequence log-probabilities for preference losses."""
        B, T = input_ids.shape[:2]
        if self.model.embed_tokens is None:  # hidden states of a pipeline stage: sequence-parallel holds T / tp
            T *= self.sequence_parallel
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        # a pipeline stage without the embedding gets the previous stage's hidden states (B, T, d)
        x = self.model.embed_tokens(input_ids) if self.model.embed_tokens is not None else input_ids  # (B, T, d)
        cos, sin = self.model.rotary_emb(positions, x.dtype)
        for layer in self.model.layers.values():
            x = layer(x, cos, sin, cache, attn_mask, attention)
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

    @torch.no_grad()
    def fuse_projections(self) -> "Transformer":
        """Inference: q/k/v and gate/up each become one matmul over a concatenated weight (fewer, larger matmuls:
        at 64 rows a bf16 576x1536 projection runs ~330 GFLOP/s, a 576x192 one ~230). The HF-named parameters
        become views into the fused tensors, so nothing is stored twice and the state dict is unchanged."""
        for layer in self.model.layers.values():
            a, m = layer.self_attn, layer.mlp
            if a.qkv_weight is not None:  # fused already (a model shared by several engines)
                continue
            parts = [a.q_proj, a.k_proj, a.v_proj]
            a.qkv_weight = torch.cat([p.weight for p in parts])
            start = 0
            for p in parts:
                n = p.weight.shape[0]
                p.weight = nn.Parameter(a.qkv_weight[start:start + n], requires_grad=False)
                start += n
            m.gate_up_weight = torch.cat([m.gate_proj.weight, m.up_proj.weight])
            n = m.gate_proj.weight.shape[0]
            m.gate_proj.weight = nn.Parameter(m.gate_up_weight[:n], requires_grad=False)
            m.up_proj.weight = nn.Parameter(m.gate_up_weight[n:], requires_grad=False)
        return self

    def new_cache(self, capacity: int | None = None) -> KVCache:
        return KVCache(self.config.num_hidden_layers, capacity)

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


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Summed next-token cross-entropy: logits[:, t] predicts labels[:, t + 1]; `ignore_index` labels (prompt,
    padding) are not trained."""
    logits = logits[:, :-1].reshape(-1, logits.size(-1))  # (B*(T-1), V)
    return F.cross_entropy(logits.float(), labels[:, 1:].reshape(-1), ignore_index=ignore_index, reduction="sum")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """`token_loss_sum` as the mean over trained tokens."""
    n = (labels[:, 1:] != ignore_index).sum().clamp(min=1)
    return token_loss_sum(logits, labels, ignore_index) / n
