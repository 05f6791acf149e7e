"""Model runner: all scheduled tokens of all requests in one forward over a paged KV cache, then sampling.

The step's tokens are flattened into one (1, N) row with their own positions; the linear layers (nearly all the
FLOPs) run once over all N. Attention goes through `PagedAttention`, the model's `attention=` seam: it writes
each layer's new keys/values into the pool slots the scheduler's block tables give, then
- one-token queries (decodes; a one-token prefill chunk is the same thing) attend together through
  `kernels.paged_attention` over their block tables;
- each longer chunk (a prompt, or a piece of one) attends causally over its cached prefix and itself.
Only positions whose logits are needed reach the vocabulary projection: the last of a request that samples,
every prompt position of a request that asked for prompt logprobs.

The runner never changes the model it is given: it runs an inference twin (`inference_model`) that shares the
model's tensors, except that q/k/v and gate/up are its own concatenated copies (one matmul each).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from actors.engine.lora import LoRABatch, Proj, adapter_order
from actors.engine.sampling import SampleRow, TokenLogprobs, logprobs_of, sample
from actors.engine.scheduler import Request, SchedulerOutput
from kernels.paged_attention import (DecodeMeta, decode_meta, gather_blocks, gather_index, in_place_cpu,
                                     paged_decode_attention, write_kv)


@dataclass
class Chunk:
    """A query longer than one token: a prompt or a piece of one."""

    start: int                        # first row in the flattened batch
    n: int                            # tokens in this chunk
    past: int                         # tokens of the sequence already in the cache
    blocks: torch.Tensor | None       # (1, nb) block ids covering past + n tokens (None when past == 0)


def decode_groups(lengths: list[int], block_size: int) -> list[list[int]]:
    """Split decodes (indices, by ascending length) into groups whose padding to the group's longest stays small:
    one group over lengths 32..768 gathers and scores ~2x the real keys; a group costs ~6 small ops per layer."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and not (len(groups[-1]) >= 8 and lengths[i] > 1.5 * lengths[groups[-1][0]] + block_size):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class PagedAttention:
    """`AttentionBackend` for one engine step (its metadata is shared by every layer)."""

    def __init__(self, k_pools, v_pools, block_size: int, slot_mapping: torch.Tensor,
                 groups: list[tuple[int, DecodeMeta]], chunks: list[Chunk]):
        self.k_pools, self.v_pools, self.block_size = k_pools, v_pools, block_size
        self.slot_mapping, self.groups, self.chunks = slot_mapping, groups, chunks

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kp, vp = self.k_pools[layer], self.v_pools[layer]
        write_kv(kp, vp, k, v, self.slot_mapping)
        hd = q.shape[-1]
        if len(self.groups) == 1 and not self.chunks:  # pure decode, one group: no output assembly
            return paged_decode_attention(q, kp, vp, self.groups[0][1], hd ** -0.5)
        out = torch.empty_like(q)
        for start, meta in self.groups:
            B = meta.seq_lens.shape[0]
            out[start:start + B] = paged_decode_attention(q[start:start + B], kp, vp, meta, hd ** -0.5)
        for c in self.chunks:
            qq = q[c.start:c.start + c.n].transpose(0, 1)[None]  # (1, nh, n, hd)
            if c.past == 0:  # a whole prompt (or its first chunk): its own keys, plain causal
                kk = k[c.start:c.start + c.n].transpose(0, 1)[None]  # (1, nkv, n, hd)
                vv = v[c.start:c.start + c.n].transpose(0, 1)[None]
                o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
            else:  # a later chunk: token i sees the past and the chunk up to itself
                ctx = c.past + c.n
                index = gather_index(c.blocks, kp.shape[0], kp.shape[1] // self.block_size)
                kk = gather_blocks(kp, index, 1, self.block_size)[:, 0, :ctx][None]  # (1, nkv, past + n, hd)
                vv = gather_blocks(vp, index, 1, self.block_size)[:, 0, :ctx][None]
                mask = torch.ones(c.n, ctx, dtype=torch.bool, device=q.device).tril(diagonal=c.past)
                o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, enable_gqa=True)
            out[c.start:c.start + c.n] = o[0].transpose(0, 1)  # (n, nh, hd)
        return out


@dataclass
class ModelOutput:
    sampled: dict[str, tuple[int, TokenLogprobs | None]] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)


def kv_bytes_per_block(model: torch.nn.Module, block_size: int, dtype: torch.dtype) -> int:
    cfg = model.config
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * block_size * elem


def _plain_linear(m) -> bool:
    return type(m) is nn.Linear and m.bias is None and not m._forward_hooks and not m._forward_pre_hooks


@torch.no_grad()
def inference_model(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree for inference, in eval mode, sharing its parameters and buffers; `model`
    itself is left as it was (names, requires_grad, values, train/eval mode). Each layer's plain bias-free
    projections become `Proj`s (actors.engine.lora), which add the step's LoRA adapters to the rows that use them;
    q/k/v and gate/up become one `Proj` each over their own concatenated weights (fewer, larger matmuls: at 64 rows
    a bf16 576x1536 projection runs ~330 GFLOP/s, a 576x192 one ~230). Those concatenations are the only tensors
    copied (about the size of those weights), and so the only ones that do not follow later in-place changes of
    `model`'s weights: build a new engine for new weights. `twin.lora_batch` is the projections' shared
    per-step adapter rows, `twin.lora_projs` the projections in order (their `pid`)."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    twin = copy.deepcopy(model, memo=shared).eval()
    batch, projs = LoRABatch(), []

    def proj(prefix: str, owner: nn.Module, names: list[str]) -> Proj:
        linears = [getattr(owner, n) for n in names]
        weight = torch.cat([lin.weight.detach() for lin in linears]) if len(linears) > 1 else linears[0].weight
        p = Proj(weight, [f"{prefix}.{n}.weight" for n in names], [lin.weight.shape[0] for lin in linears],
                 batch, len(projs))
        projs.append(p)
        if len(linears) > 1:  # the twin's own linears become views into the fused weight
            start = 0
            for lin in linears:
                n = lin.weight.shape[0]
                lin.weight = nn.Parameter(p.weight[start:start + n], requires_grad=False)
                start += n
        return p

    layers = getattr(getattr(twin, "model", None), "layers", None)
    for key, layer in (layers.items() if isinstance(layers, nn.ModuleDict) else ()):
        a, m = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        pre = f"model.layers.{key}"
        if a is not None and hasattr(a, "qkv") and all(
                _plain_linear(getattr(a, n, None)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            a.qkv = proj(f"{pre}.self_attn", a, ["q_proj", "k_proj", "v_proj"])
            a.o_proj = proj(f"{pre}.self_attn", a, ["o_proj"])
        if m is not None and hasattr(m, "gate_up") and all(
                _plain_linear(getattr(m, n, None)) for n in ("gate_proj", "up_proj", "down_proj")):
            m.gate_up = proj(f"{pre}.mlp", m, ["gate_proj", "up_proj"])
            m.down_proj = proj(f"{pre}.mlp", m, ["down_proj"])
    head = getattr(twin, "lm_head", None)
    if _plain_linear(head):  # a Proj too, so int8 serving covers the vocabulary projection (no adapter targets it)
        twin.lm_head = Proj(head.weight.detach(), ["lm_head.weight"], [head.weight.shape[0]], batch, -1)
    twin.lora_batch, twin.lora_projs = batch, projs
    return twin


OUTLIER_CHANNELS = 32     # per projection kept out of int8 (kernels.int8.Int8Weight): +3.7% -> +0.9% perplexity


@torch.no_grad()
def outlier_channels(twin: nn.Module, k: int | None = None, seed: int = 0) -> dict[int, torch.Tensor]:
    """id(Proj) -> the `k` input channels with the largest |activation| over a calibration pass of 4 x 512
    random token ids (seeded, so the same on every replica). The channels that dominate are the model's own, not
    the text's: measured on SmolLM2-135M, channels picked on random ids serve Wikipedia text as well as channels
    picked on Wikipedia (+0.90% vs +0.82% perplexity) and need no calibration data shipped."""
    amax: dict[int, torch.Tensor] = {}

    def hook_for(proj_id: int):   # id(Proj): the key of the result
        def hook(mod, args):
            a = args[0].reshape(-1, args[0].shape[-1]).abs().amax(0).float()
            amax[proj_id] = torch.maximum(amax[proj_id], a) if proj_id in amax else a
        return hook

    # a plain forward runs each Proj itself, except fused q|k|v: attention without the engine's backend runs
    # q_proj, k_proj, v_proj apart, so the first slice's own linear sees that input
    handles = []
    for p in [m for m in twin.modules() if isinstance(m, Proj)]:
        for mod in {id(m): m for m in (p, twin.get_submodule(p.names[0].removesuffix(".weight")))}.values():
            handles.append(mod.register_forward_pre_hook(hook_for(id(p))))
    try:
        g = torch.Generator().manual_seed(seed)
        dev = next(twin.parameters()).device
        c = twin.config
        T = min(512, c.max_position_embeddings)
        # above the special and byte tokens (the first ~1000 of a 49k vocabulary)
        ids = torch.randint(min(1000, c.vocab_size // 2), c.vocab_size, (4, T), generator=g).to(dev)
        last = torch.zeros(1, T, dtype=torch.bool, device=dev)
        last[0, -1] = True                    # the head sees one row per sequence, as in serving
        for row in ids:                       # one sequence at a time: one (1, T) forward's activations alive
            twin(row[None], logits_mask=last)
    finally:
        for h in handles:
            h.remove()
    k = OUTLIER_CHANNELS if k is None else k
    return {i: a.topk(min(k, a.numel())).indices for i, a in amax.items()}


class ModelRunner:
    def __init__(self, model: torch.nn.Module, num_blocks: int, block_size: int, quantization: str = "none"):
        self.model = inference_model(model)
        if quantization != "none":   # "int8" or "int8:<kernel>" (kernels.int8.INT8_CPU_KERNELS)
            kernel = quantization.partition(":")[2] or "auto"
            outliers = outlier_channels(self.model)
            for m in self.model.modules():
                if isinstance(m, Proj):
                    m.quantize(kernel, outliers.get(id(m)))
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.block_size = block_size
        cfg = model.config
        shape = (cfg.num_key_value_heads, num_blocks * block_size, cfg.head_dim)  # (nkv, slots, hd) per layer
        # zeros: block 0 (the padding block) must hold finite values, and so must unwritten slots
        self.k_pools = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(cfg.num_hidden_layers)]
        self.v_pools = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(cfg.num_hidden_layers)]

    def _slot(self, req: Request, pos: int) -> int:
        return req.kv.blocks[pos // self.block_size].id * self.block_size + pos % self.block_size

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput, sample_rows: dict[str, SampleRow]) -> ModelOutput:
        """`sample_rows`: the requests that sample a token after this step (their last token is computed)."""
        bs, dev = self.block_size, self.device
        decodes = [(req, n) for req, n in sched.scheduled if n == 1]
        if in_place_cpu(self.k_pools[0]):  # the C++ kernel loops over each sequence's own length: no padding
            groups_idx = [list(range(len(decodes)))] if decodes else []
        else:
            groups_idx = decode_groups([req.num_computed + 1 for req, _ in decodes], bs)
        # within a decode group and among prefills, one adapter's requests side by side: contiguous LoRA runs
        groups_idx = [sorted(g, key=lambda i: adapter_order(decodes[i][0].adapter)) for g in groups_idx]
        prefills = sorted(((r, n) for r, n in sched.scheduled if n != 1), key=lambda rn: adapter_order(rn[0].adapter))
        items = [decodes[i] for g in groups_idx for i in g] + prefills
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        need: list[int] = []                       # flattened rows whose logits are needed, ascending
        sample_at: list[tuple[str, int]] = []      # (request id, index into need)
        prompt_at: list[tuple[Request, int, int, int]] = []  # (request, first need index, count, first position)
        chunks: list[Chunk] = []
        lora_spans: list = []                      # (first row, rows, LoadedAdapter) of requests with an adapter
        for req, n in items:
            start, row = req.num_computed, len(ids)
            ids.extend(req.token_ids[start:start + n])
            if req.adapter is not None:
                lora_spans.append((row, n, req.adapter))
            positions.extend(range(start, start + n))
            slots.extend(self._slot(req, p) for p in range(start, start + n))
            if n > 1:
                blocks = None
                if start:
                    blocks = torch.tensor([[b.id for b in req.kv.blocks[:-(-(start + n) // bs)]]], device=dev)
                chunks.append(Chunk(row, n, start, blocks))
            if req.wants_prompt_logprobs:
                last = min(start + n, len(req.prompt_ids) - 1)  # position p scores prompt token p + 1
                if last > start:
                    prompt_at.append((req, len(need), last - start, start))
                    need.extend(range(row, row + last - start))
            if req.request_id in sample_rows:
                if not need or need[-1] != row + n - 1:
                    need.append(row + n - 1)
                sample_at.append((req.request_id, len(need) - 1))
        groups, row = [], 0
        for g in groups_idx:
            tables = [[b.id for b in decodes[i][0].kv.blocks] for i in g]
            width = max(len(t) for t in tables)
            groups.append((row, decode_meta(
                torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long, device=dev),
                torch.tensor([decodes[i][0].num_computed + 1 for i in g], dtype=torch.long, device=dev),
                bs, self.k_pools[0])))
            row += len(g)
        attention = PagedAttention(self.k_pools, self.v_pools, bs, torch.tensor(slots, dtype=torch.long, device=dev),
                                   groups, chunks)
        out = ModelOutput()
        mask = torch.zeros(1, len(ids), dtype=torch.bool, device=dev)
        mask[0, need] = True
        lora = self.model.lora_batch
        lora.set(lora_spans)
        try:
            logits = self.model(torch.tensor([ids], device=dev), positions=torch.tensor([positions], device=dev),
                                logits_mask=mask, attention=attention)  # (len(need), V)
        finally:
            lora.set([])
        if not need:
            return out
        logits = logits.float()
        for req, first, count, p0 in prompt_at:
            rows = logits[first:first + count]
            targets = torch.tensor(req.token_ids[p0 + 1:p0 + 1 + count], device=dev)
            out.prompt_logprobs[req.request_id] = logprobs_of(
                torch.log_softmax(rows, dim=-1), targets, req.params.prompt_logprobs)
        if sample_at:
            rows = [sample_rows[rid] for rid, _ in sample_at]
            picked = logits[torch.tensor([i for _, i in sample_at], device=dev)]
            tokens, lps = sample(picked, rows)
            for (rid, _), t, lp in zip(sample_at, tokens, lps):
                out.sampled[rid] = (t, lp)
        return out
