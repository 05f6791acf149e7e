"""Sampling parameters and the batched sampler: one call turns a step's logits into one token per request.

Order (as vLLM and HF apply it): repetition / presence / frequency penalties, `min_tokens` and a grammar guide's
mask on the raw logits,
then greedy rows take the argmax; the others are divided by their temperature, cut by top-k, top-p and min-p, and
sampled with their own generator (a seeded request gets the same tokens whatever else is in the batch).
Logprobs are those of the raw model distribution (before penalties and temperature), as vLLM reports them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from actors.common.config import check
from actors.engine.guide import GrammarSpec
from actors.engine.lora import AdapterRef


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


MAX_LOGPROBS = 20  # OpenAI's cap for top_logprobs


@dataclass
class SamplingParams:
    temperature: float = 1.0          # 0 = greedy (argmax)
    top_p: float = 1.0                # nucleus mass in (0, 1]; 1 = off
    top_k: int = 0                    # keep the k most likely tokens; 0 = off
    min_p: float = 0.0                # drop tokens below min_p x the top token's probability; 0 = off
    repetition_penalty: float = 1.0   # HF/CTRL: logits of seen tokens (prompt + output) /p if > 0, *p if < 0
    presence_penalty: float = 0.0     # OpenAI: minus this once for every token already in the output
    frequency_penalty: float = 0.0    # OpenAI: minus this per occurrence in the output
    max_tokens: int = 16              # new tokens at most (0: score the prompt only); the context may end it sooner
    min_tokens: int = 0               # end-of-sequence and stop token ids are masked until this many are out
    stop: list[str] = field(default_factory=list)            # stop strings, left out of the output text
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop ids; the id is kept, its text is not
    ignore_eos: bool = False          # do not stop at the model's end-of-sequence ids (benchmarks)
    seed: int | None = None           # per-request generator seed: same seed, same sample
    logprobs: int | None = None       # logprob of each sampled token and this many top alternatives
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (no prefix-cache reuse)
    guide: GrammarSpec | None = None  # tokens masked to a grammar (actors.engine.guide), lazily from a trigger
    adapter: AdapterRef | None = None  # generate with this LoRA adapter over the base (actors.engine.lora)

    def __post_init__(self):
        check(_num(self.temperature) and self.temperature >= 0, "temperature",
              f"must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        check(_num(self.top_p) and 0 < self.top_p <= 1, "top_p",
              f"must be in (0, 1], e.g. 0.9 or 1.0 to disable, got {self.top_p!r}")
        if self.top_k == -1:  # vLLM's spelling of "off"
            self.top_k = 0
        check(_int(self.top_k) and self.top_k >= 0, "top_k", f"must be an integer >= 0 (0 = off), got {self.top_k!r}")
        check(_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", f"must be in [0, 1] (0 = off), got {self.min_p!r}")
        check(_num(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
              f"must be > 0 (1 = off), got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            check(_num(v) and -2 <= v <= 2, name, f"must be in [-2, 2] (0 = off), got {v!r}")
        check(_int(self.max_tokens) and self.max_tokens >= 0, "max_tokens",
              f"must be an integer >= 0, got {self.max_tokens!r}")
        check(_int(self.min_tokens) and 0 <= self.min_tokens, "min_tokens",
              f"must be an integer >= 0, got {self.min_tokens!r}")
        check(self.min_tokens <= self.max_tokens, "min_tokens",
              f"({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        if isinstance(self.stop, str):  # a lone string is one stop string, not a list of characters
            self.stop = [self.stop]
        check(isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop), "stop",
              f"must be a list of non-empty strings, got {self.stop!r}")
        check(all(_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
              f"must be a list of token ids >= 0, got {self.stop_token_ids!r}")
        check(self.seed is None or _int(self.seed), "seed", f"must be an integer or null, got {self.seed!r}")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            check(v is None or (_int(v) and 0 <= v <= MAX_LOGPROBS), name,
                  f"must be null or an integer in [0, {MAX_LOGPROBS}], got {v!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


@dataclass
class TokenLogprobs:
    """Logprob of one chosen token and the top alternatives (token id, logprob), most likely first."""

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]]


@dataclass
class SampleRow:
    """One request's sampling inputs for this step."""

    params: SamplingParams
    generator: torch.Generator
    prompt_ids: list[int]
    output_ids: list[int]
    stop_ids: frozenset[int]          # ids masked while fewer than min_tokens are out
    allowed: torch.Tensor | None = None  # (V,) bool: the only tokens a guide allows now


def logprobs_of(logprobs: torch.Tensor, token_ids: torch.Tensor, k: int) -> list[TokenLogprobs]:
    """Per row: the logprob and rank of `token_ids[row]` and the top-k alternatives. logprobs (M, V) float."""
    chosen = logprobs.gather(1, token_ids[:, None])[:, 0]  # (M,)
    ranks = (logprobs > chosen[:, None]).sum(1) + 1  # (M,) 1 = the most likely
    top_v, top_i = (logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], token_ids[:, None][:, :0]))
    out = []
    for r in range(logprobs.shape[0]):
        out.append(TokenLogprobs(int(token_ids[r]), float(chosen[r]), int(ranks[r]),
                                 list(zip(top_i[r].tolist(), top_v[r].tolist()))))
    return out


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits (M, V) for M requests -> (token id per row, logprobs per row where asked)."""
    logits = logits.float()
    raw = logits
    M, V = logits.shape
    dev = logits.device
    if any(r.params.penalized or len(r.output_ids) < r.params.min_tokens or r.allowed is not None for r in rows):
        logits = logits.clone()
        for i, r in enumerate(rows):
            p = r.params
            if p.repetition_penalty != 1:
                seen = torch.tensor(sorted(set(r.prompt_ids) | set(r.output_ids)), dtype=torch.long, device=dev)
                x = logits[i, seen]
                logits[i, seen] = torch.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and r.output_ids:
                counts = torch.bincount(torch.tensor(r.output_ids, device=dev), minlength=V)[:V].to(logits.dtype)
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
            if len(r.output_ids) < p.min_tokens and r.stop_ids:
                logits[i, torch.tensor(sorted(r.stop_ids), dtype=torch.long, device=dev)] = float("-inf")
            if r.allowed is not None and bool(r.allowed.any()):
                logits[i, : r.allowed.numel()].masked_fill_(~r.allowed.to(dev), float("-inf"))
    tokens = torch.argmax(logits, dim=-1)  # (M,) greedy rows are done
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        idx = torch.tensor(sampled, device=dev)
        temps = torch.tensor([rows[i].params.temperature for i in sampled], device=dev)
        x = logits[idx] / temps[:, None]  # (S, V)
        top_k = [rows[i].params.top_k for i in sampled]
        if any(top_k):
            k = torch.tensor([t if t else V for t in top_k], device=dev).clamp(max=V)
            kth = x.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])  # (S, 1)
            x = x.masked_fill(x < kth, float("-inf"))
        probs = torch.softmax(x, dim=-1)
        top_p = torch.tensor([rows[i].params.top_p for i in sampled], device=dev)
        if bool((top_p < 1).any()):
            sp, order = probs.sort(dim=-1, descending=True)
            # drop a token when the mass before it already reaches top_p; the top token always stays
            drop = (sp.cumsum(dim=-1) - sp) >= top_p[:, None]
            probs = probs.scatter(1, order, sp.masked_fill(drop, 0.0))
        min_p = torch.tensor([rows[i].params.min_p for i in sampled], device=dev)
        if bool((min_p > 0).any()):
            probs = probs.masked_fill(probs < min_p[:, None] * probs.max(dim=-1, keepdim=True).values, 0.0)
        for j, i in enumerate(sampled):
            # exponential race: argmax p / E with E ~ Exp(1) draws from p, with this request's own generator
            e = torch.empty(V, device=dev).exponential_(generator=rows[i].generator)
            tokens[i] = torch.argmax(probs[j] / e)
    want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    lps: list[TokenLogprobs | None] = [None] * M
    if want:
        idx = torch.tensor(want, device=dev)
        k = max(rows[i].params.logprobs for i in want)
        got = logprobs_of(torch.log_softmax(raw[idx], dim=-1), tokens[idx], k)
        for i, g in zip(want, got):
            g.top = g.top[:rows[i].params.logprobs]
            lps[i] = g
    return tokens.tolist(), lps
