"""Inference engine behind a small interface: add_request / step / abort / has_unfinished.

`PlainEngine` runs every request with its own growing `KVCache` (prefill on its first step, then one
token per step). The continuous-batching engine with a paged KV cache replaces it later behind the same
`Engine` interface, so the scheduler / runner / update split here is the seam it plugs into:

    batch = scheduler.schedule()     # which requests run this step, and which tokens they feed
    logits = runner.execute(batch)   # one forward per request -> next-token logits
    outputs = update(batch, logits)  # sample, detokenize, apply stop rules, free finished requests

`AsyncEngine` drives any `Engine` from asyncio: one background task owns the engine and runs its steps in
a worker thread, so concurrent HTTP requests never touch the engine at the same time.
No Ray here: the Serve deployment is a thin shell around these classes.
"""
from __future__ import annotations

import asyncio
import collections
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from actors.common.config import check

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    temperature: float = 1.0          # 0 = greedy (argmax)
    top_p: float = 1.0                # nucleus sampling mass, in (0, 1]
    max_tokens: int = 16              # new tokens at most; the context length may end a request earlier
    stop: list[str] = field(default_factory=list)            # stop strings, left out of the output text
    stop_token_ids: list[int] = field(default_factory=list)  # e.g. EOS / <|im_end|>; id kept, text not
    seed: int | None = None           # per-request generator seed: same seed, same sample

    def __post_init__(self):
        check(isinstance(self.temperature, (int, float)) and self.temperature >= 0, "temperature",
              f"must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        check(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p",
              f"must be in (0, 1], e.g. 0.9 or 1.0 to disable, got {self.top_p!r}")
        check(isinstance(self.max_tokens, int) and not isinstance(self.max_tokens, bool)
              and self.max_tokens >= 1, "max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        if isinstance(self.stop, str):  # a lone string is one stop string, not a list of characters
            self.stop = [self.stop]
        check(all(isinstance(s, str) and s for s in self.stop), "stop",
              f"must be a list of non-empty strings, got {self.stop!r}")
        check(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
              f"must be a list of token ids >= 0, got {self.stop_token_ids!r}")
        check(self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)), "seed",
              f"must be an integer or null, got {self.seed!r}")


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]          # tokens produced by this step
    token_ids: list[int]              # every completion token so far (a stop token id included)
    delta_text: str                   # text that became final in this step (stream this)
    text: str                         # cumulative completion text (stop strings cut off)
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int


class Engine(ABC):
    """What the serving layer needs from an engine."""

    @abstractmethod
    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams) -> None: ...

    @abstractmethod
    def step(self) -> list[RequestOutput]:
        """Advance every scheduled request by one token; outputs only for requests that made progress."""

    @abstractmethod
    def abort(self, request_id: str) -> bool:
        """Drop a request (client went away); True if it was still known."""

    @abstractmethod
    def has_unfinished(self) -> bool: ...

    @property
    @abstractmethod
    def max_model_len(self) -> int: ...

    def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams,
                 request_id: str | None = None) -> RequestOutput:
        """Run one request to completion (offline use, tests); other requests in flight advance too."""
        rid = request_id or uuid.uuid4().hex
        self.add_request(rid, prompt_token_ids, params)
        while True:
            for out in self.step():
                if out.request_id == rid and out.finished:
                    return out
            if not self.has_unfinished():
                raise RuntimeError(f"request {rid} vanished without finishing (aborted?)")


# ---------------------------------------------------------------------------------------------------
# Per-request state


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without re-decoding everything.

    Special tokens (EOS, <|im_start|>, ...) are dropped here by id rather than by
    `decode(skip_special_tokens=True)`: the tokenizers backend may flag the <tool_call> markers special
    too, and those must reach the text for tool-call parsing.
    Byte-level BPE tokens may end in the middle of a UTF-8 character; such text decodes to U+FFFD and is
    held back until the next token completes it (the vLLM prefix/read-offset scheme).
    """

    def __init__(self, tokenizer, skip_ids: frozenset[int] = frozenset()):
        self.tok = tokenizer
        self.skip_ids = skip_ids
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def push(self, token_id: int) -> str:
        if token_id in self.skip_ids:
            return ""
        self.ids.append(token_id)
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.text += delta
            return delta
        return ""


@dataclass
class RequestState:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    detok: IncrementalDetokenizer
    cache: Any = None                 # KVCache, created at prefill
    output_ids: list[int] = field(default_factory=list)
    text: str = ""                    # completion text with stop strings applied
    emitted: int = 0                  # chars of `text` already handed out as deltas
    finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclass
class ScheduledSeq:
    seq: RequestState
    input_ids: list[int]              # the whole prompt at prefill, else the last sampled token
    is_prefill: bool


# ---------------------------------------------------------------------------------------------------
# Scheduler / runner


class PlainScheduler:
    """FIFO admission; every running request runs one step each time (they interleave token by token)."""

    def __init__(self, max_num_seqs: int = 64):
        self.max_num_seqs = max_num_seqs
        self.waiting: collections.deque[RequestState] = collections.deque()
        self.running: dict[str, RequestState] = {}

    def add(self, seq: RequestState) -> None:
        self.waiting.append(seq)

    def schedule(self) -> list[ScheduledSeq]:
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            self.running[seq.request_id] = seq
        batch = []
        for seq in self.running.values():
            if seq.cache is None:
                batch.append(ScheduledSeq(seq, seq.prompt_ids, True))
            else:
                batch.append(ScheduledSeq(seq, seq.output_ids[-1:], False))
        return batch

    def free(self, request_id: str) -> RequestState | None:
        seq = self.running.pop(request_id, None)
        if seq is not None:
            return seq
        for s in self.waiting:
            if s.request_id == request_id:
                self.waiting.remove(s)
                return s
        return None

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.running or any(s.request_id == request_id for s in self.waiting)


class PlainRunner:
    """One forward per scheduled request against its own KVCache; returns last-position logits."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def execute(self, batch: list[ScheduledSeq]) -> list[torch.Tensor]:
        out = []
        for item in batch:
            if item.is_prefill:  # room for the whole request: the cache is written in place, never regrown
                seq = item.seq
                item.seq.cache = self.model.new_cache(capacity=len(seq.prompt_ids) + seq.params.max_tokens)
            ids = torch.tensor([item.input_ids], dtype=torch.long, device=self.device)  # (1, T)
            last = torch.zeros_like(ids, dtype=torch.bool)
            last[0, -1] = True  # the next token needs only the last position's logits
            logits = self.model(ids, cache=item.seq.cache, logits_mask=last)  # (1, V)
            out.append(logits[0].float())  # (V,)
        return out


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Greedy at temperature 0; otherwise temperature-scaled softmax restricted to the top-p nucleus."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)  # (V,)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # drop a token when the mass before it already reaches top_p; the top token always stays
        drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_p, 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string (held back)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class PlainEngine(Engine):
    def __init__(self, model: torch.nn.Module, tokenizer, max_num_seqs: int = 64,
                 max_model_len: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        ctx = int(model.config.max_position_embeddings)
        self._max_model_len = min(ctx, max_model_len) if max_model_len else ctx
        self.scheduler = PlainScheduler(max_num_seqs)
        self.runner = PlainRunner(model)
        self.vocab_size = int(model.config.vocab_size)
        self._skip_ids = frozenset(int(i) for i in tokenizer.all_special_ids)

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        if request_id in self.scheduler:
            raise ValueError(f"request_id {request_id!r} is already running; use a unique id")
        ids = [int(t) for t in prompt_token_ids]
        if not ids:
            raise ValueError("prompt is empty: give at least one token")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens but the context length is {self.max_model_len}; "
                             "shorten the prompt so at least one token can be generated")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        gen = torch.Generator(device=self.runner.device)
        if params.seed is None:
            gen.seed()  # fresh nondeterministic seed
        else:
            gen.manual_seed(params.seed)
        detok = IncrementalDetokenizer(self.tokenizer, self._skip_ids)
        self.scheduler.add(RequestState(request_id, ids, params, gen, detok))

    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        logits = self.runner.execute(batch)
        return self.update(batch, logits)

    def update(self, batch: list[ScheduledSeq], logits: list[torch.Tensor]) -> list[RequestOutput]:
        outputs = []
        for item, lg in zip(batch, logits):
            seq = item.seq
            p = seq.params
            tok = sample(lg, p, seq.generator)
            seq.output_ids.append(tok)
            if tok in p.stop_token_ids:
                seq.finish_reason = "stop"  # the stop token's text never reaches the output
            else:
                seq.text += seq.detok.push(tok)
                self._check_stop_strings(seq)
            if seq.finish_reason is None:
                if len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
                    seq.finish_reason = "length"
            if seq.finished:
                ready = len(seq.text)
                self.scheduler.free(seq.request_id)
                seq.cache = None
            else:  # hold back a tail that might be the start of a stop string
                ready = len(seq.text) - _stop_prefix_len(seq.text, p.stop) if p.stop else len(seq.text)
            ready = max(ready, seq.emitted)
            delta, seq.emitted = seq.text[seq.emitted:ready], ready
            outputs.append(RequestOutput(
                request_id=seq.request_id, new_token_ids=[tok], token_ids=list(seq.output_ids),
                delta_text=delta, text=seq.text[:ready], finished=seq.finished,
                finish_reason=seq.finish_reason, prompt_tokens=len(seq.prompt_ids),
                completion_tokens=len(seq.output_ids),
            ))
        return outputs

    @staticmethod
    def _check_stop_strings(seq: RequestState) -> None:
        stops = seq.params.stop
        if not stops:
            return
        # a stop string can only end inside the newest piece; search from just before it
        start = max(0, seq.emitted - max(len(s) for s in stops))
        hits = [i for i in (seq.text.find(s, start) for s in stops) if i >= 0]
        if hits:
            seq.text = seq.text[:min(hits)]
            seq.finish_reason = "stop"

    def abort(self, request_id: str) -> bool:
        seq = self.scheduler.free(request_id)
        if seq is not None:
            seq.cache = None
        return seq is not None

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()


# ---------------------------------------------------------------------------------------------------
# asyncio driver


class AsyncEngine:
    """Serializes all engine access through one background task; requests stream RequestOutputs.

    add/abort are queued and applied by the worker thread between steps, so the event loop never waits
    for a forward pass and the engine never sees two threads.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._commands: collections.deque[tuple[str, str, Any, Any]] = collections.deque()
        self._queues: dict[str, asyncio.Queue] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def loop_error(self) -> BaseException | None:
        """Why the background loop died, if it did (a health check should then fail)."""
        t = self._task
        if t is None or not t.done() or t.cancelled():
            return None
        return t.exception()

    def _ensure_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())

    async def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield this request's outputs until it finishes; abandoning the iterator aborts the request."""
        self._ensure_loop()
        rid = request_id or uuid.uuid4().hex
        q: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = q
        self._commands.append(("add", rid, list(prompt_token_ids), params))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._queues.pop(rid, None)
            if not finished:  # client disconnected or consumer stopped early
                self._commands.append(("abort", rid, None, None))
                self._wake.set()

    def _work(self) -> list[tuple[str, Any]]:
        """Runs in the worker thread: apply queued commands, then one engine step."""
        results: list[tuple[str, Any]] = []
        while self._commands:
            op, rid, ids, params = self._commands.popleft()
            if op == "add":
                try:
                    self.engine.add_request(rid, ids, params)
                except Exception as e:  # a bad request fails alone
                    results.append((rid, e))
            else:
                self.engine.abort(rid)
        if self.engine.has_unfinished():
            results.extend((o.request_id, o) for o in self.engine.step())
        return results

    async def _run(self) -> None:
        while True:
            if not self._commands and not self.engine.has_unfinished():
                self._wake.clear()
                await self._wake.wait()
            try:
                results = await asyncio.to_thread(self._work)
            except Exception as e:  # engine state is unknown after a failed step: fail every request
                for rid in list(self._queues):
                    self.engine.abort(rid)
                    self._queues[rid].put_nowait(RuntimeError(f"engine step failed: {e!r}"))
                continue
            for rid, item in results:
                q = self._queues.get(rid)
                if q is not None:
                    q.put_nowait(item)
