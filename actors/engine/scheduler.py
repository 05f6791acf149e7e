"""Continuous-batching scheduler: which requests run this step and how many of their tokens (vLLM v1 style).

There is no separate prefill or decode phase: each request has `num_computed` of its `token_ids` (prompt, then
output) in the KV cache, and a step gives each scheduled request up to the rest of them, within a token budget
(`max_num_batched_tokens`). A decode is a request one token behind; a long prompt is prefilled in chunks over
several steps (chunked prefill) while the running requests keep decoding.

- Running requests first, in the order they were admitted (FCFS), then waiting ones while the budget,
  `max_num_seqs` and free KV blocks allow; a waiting request first reuses the cached blocks of its prompt's prefix.
- A waiting request whose next uncached block is one that a request admitted in this same step is computing
  (a shared system prompt, a few-shot header) waits one step, and with it the rest of the queue, so it reads that
  block from the cache instead of computing a copy (SGLang's in-batch prefix caching). 30 tool-call prompts
  sharing 76 of ~96 tokens: 19% of their prompt tokens hit the cache when admitted together, 67% with this.
- When a running request needs a block and none is free, the last admitted running request (the end of the
  running list; a preempted request re-admitted later counts as admitted then) is preempted: its blocks are freed
  and it goes back to the front of the queue to be recomputed (prompt + output so far) later. Its output is kept,
  so a client sees nothing but a delay.
- `abort` frees a request's blocks at once.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from actors.engine.kv_cache import BlockManager, KVSeq
from actors.engine.sampling import SamplingParams, TokenLogprobs

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    token_ids: list[int] = field(default_factory=list)  # prompt + output: what the KV cache must hold
    num_computed: int = 0             # leading token_ids whose keys/values are in the cache
    status: str = WAITING
    kv: KVSeq = field(default_factory=KVSeq)
    num_preemptions: int = 0
    num_cached_tokens: int = 0        # prompt tokens served from the prefix cache (first schedule)
    finish_reason: str | None = None
    prompt_logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    state: Any = None                 # the engine's per-request state (generator, detokenizer, text)
    adapter: Any = None               # its LoRA adapter as the engine loaded it (actors.engine.lora), None: base

    def __post_init__(self):
        if not self.token_ids:
            self.token_ids = list(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids):]

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None and self.num_output == 0


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Request, int]]   # (request, tokens to compute this step), decodes first
    preempted: list[Request]


class Scheduler:
    def __init__(self, kv: BlockManager, max_num_seqs: int = 64, max_num_batched_tokens: int = 2048):
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.requests

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted: list[Request] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed, budget)
            while not self.kv.allocate(req.kv, req.num_computed + n):
                victim = self.running.pop()  # the last admitted gives way
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            else:
                scheduled.append((req, n))
                budget -= n
                i += 1
        if not preempted:  # admitting new work while evicting running work would thrash
            bs = self.kv.block_size
            pending: set[int] = set()  # prefix keys of the blocks this step's admissions compute
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                req = self.waiting[0]
                computed = []
                lookup = req.num_computed == 0 and not req.wants_prompt_logprobs
                if lookup:
                    computed = self.kv.computed_blocks(req.kv, req.token_ids, count=False)
                    keys = req.kv.keys  # its full prompt blocks' keys, chained by the lookup
                    if len(computed) < len(keys) and keys[len(computed)] in pending:
                        break
                start = len(computed) * bs
                n = min(req.num_tokens - start, budget)
                if not self.kv.allocate(req.kv, start + n, computed):
                    break
                if lookup:
                    self.kv.count_lookup(req.num_tokens, len(computed))
                    pending.update(req.kv.keys[len(computed):(start + n) // bs])
                self.waiting.popleft()
                if req.num_preemptions == 0:
                    req.num_cached_tokens = start
                req.num_computed, req.status = start, RUNNING
                self.running.append(req)
                scheduled.append((req, n))
                budget -= n
        # decodes (one token) first: the runner batches their attention together
        scheduled.sort(key=lambda item: item[1] != 1)
        return SchedulerOutput(scheduled, preempted)

    def _preempt(self, req: Request) -> None:
        self.kv.free_seq(req.kv)
        req.num_computed = 0
        req.prompt_logprobs = []  # recomputed with the prompt
        req.status = WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def computed(self, req: Request, n: int) -> None:
        """The step computed `n` more tokens of `req`: register its newly full blocks in the prefix cache."""
        req.num_computed += n
        self.kv.register(req.kv, req.token_ids, req.num_computed)

    def finish(self, req: Request, reason: str | None = None) -> None:
        """Remove a request (finished or aborted) and free its blocks now."""
        if req.status == RUNNING:
            self.running.remove(req)
        elif req.status == WAITING:
            self.waiting.remove(req)
        self.kv.free_seq(req.kv)
        req.status = FINISHED
        if reason is not None:
            req.finish_reason = reason
        self.requests.pop(req.request_id, None)

    def abort(self, request_id: str) -> Request | None:
        req = self.requests.get(request_id)
        if req is not None:
            self.finish(req)
        return req
