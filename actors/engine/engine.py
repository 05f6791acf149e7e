"""Inference engine behind a small interface: add_request / step / abort / has_unfinished.

`LLMEngine` is continuous batching over a paged KV cache with prefix caching; one step reads

    sched = self.scheduler.schedule()              # which requests run, how many tokens each (scheduler.py)
    out = self.runner.execute(sched, to_sample)    # one forward over all of them, then sampling (runner.py)
    return self.update(sched, out)                 # append tokens, detokenize, stop rules, free finished

`make_engine(model, tokenizer, config)` picks the engine class by `EngineConfig.name` (`ENGINES`, or "module:Class").
`AsyncEngine` drives any `Engine` from asyncio: one background task owns the engine and runs its steps in a
worker thread, so concurrent HTTP requests never touch the engine at the same time.
No Ray here: the Serve deployment is a thin shell around these classes.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import importlib
import os
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from actors.common.config import check
from actors.engine.kv_cache import BlockManager
from actors.engine.runner import ModelRunner, kv_bytes_per_block
from actors.engine.guide import Guide, GuideFactory
from actors.engine.lora import AdapterError, LoRAManager
from actors.engine.metrics import EngineMetrics
from actors.engine.sampling import SampleRow, SamplingParams, TokenLogprobs
from actors.engine.scheduler import Request, Scheduler

FinishReason = Literal["stop", "length"]
__all__ = ["Engine", "LLMEngine", "EngineConfig", "AsyncEngine", "SamplingParams", "RequestOutput", "make_engine",
           "IncrementalDetokenizer", "parse_memory"]


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
    logprobs: list[TokenLogprobs] = field(default_factory=list)      # for new_token_ids, when asked
    prompt_logprobs: list[TokenLogprobs | None] | None = None        # on the first output, when asked
    cached_tokens: int = 0            # prompt tokens served from the prefix cache


class Engine(ABC):
    """What the serving layer needs from an engine."""

    @abstractmethod
    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams) -> None: ...

    @abstractmethod
    def step(self) -> list[RequestOutput]:
        """Advance the scheduled requests; outputs only for requests that made visible progress."""

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
        return self.generate_many([prompt_token_ids], params, [request_id or uuid.uuid4().hex])[0]

    def generate_many(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams],
                      request_ids: Sequence[str] | None = None) -> list[RequestOutput]:
        """Run many requests together to completion; outputs in the order of `prompts`."""
        ids = list(request_ids) if request_ids else [uuid.uuid4().hex for _ in prompts]
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        for rid, p, sp in zip(ids, prompts, plist):
            self.add_request(rid, p, sp)
        seen: dict[str, list[RequestOutput]] = {rid: [] for rid in ids}
        left = set(ids)
        while left:
            if not self.has_unfinished():
                raise RuntimeError(f"requests {sorted(left)[:3]} vanished without finishing (aborted?)")
            for out in self.step():
                seen[out.request_id].append(out)
                if out.finished:
                    left.discard(out.request_id)
        return [fold_outputs(seen[rid]) for rid in ids]


# ---------------------------------------------------------------------------------------------------
# Configuration

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*$", re.I)
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(value: int | float | str) -> tuple[int | None, float | None]:
    """`kv_cache_memory` -> (bytes, None) or (None, fraction). 0 < x <= 1 is a fraction of device memory."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size; write e.g. 2GiB, 512MiB, 1073741824 or 0.3 (a fraction)")
        num, unit = float(m.group(1)), (m.group(2) or "").upper().rstrip("B").rstrip("I")
        if not unit and num <= 1:
            return None, num
        return int(num * _UNITS[unit]), None
    if isinstance(value, (int, float)) and value > 0:
        return (None, float(value)) if value <= 1 else (int(value), None)
    raise ValueError(f"{value!r} is not a size; write e.g. 2GiB or a fraction in (0, 1]")


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with open("/proc/meminfo") as f:  # MemAvailable: what can be allocated without swapping
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read MemAvailable from /proc/meminfo; give kv_cache_memory in bytes (e.g. 2GiB)")


@dataclass
class EngineConfig:
    """The engine's settings: the `engine:` section of a serve config (`serve.engine.*`), and what eval workers and
    `jobs.chat` build directly. Validated here, once: `kv_cache_memory` is parsed when the config is made."""

    name: str = "paged"               # the engine class: a key of ENGINES or "package.module:Class"
    max_num_seqs: int = 64            # requests advanced together in one step
    max_num_batched_tokens: int = 2048  # tokens per step; a longer prompt is prefilled in chunks of this
    block_size: int = 16              # tokens per KV block (a power of 2: the Triton kernel tiles by it)
    kv_cache_memory: Any = "2GiB"     # KV pool size in bytes ("2GiB", 2147483648) or a fraction (0, 1] of free memory
    enable_prefix_caching: bool = True
    max_model_len: int = 0            # 0 = the model's max_position_embeddings
    # LoRA adapters loaded at once (vLLM's max_loras); a request for another waits until one is idle and evicted
    max_loras: int = 4
    # base weights of every projection (q/k/v, o, gate/up, down, the vocabulary head): none (the model's dtype),
    # int8 (per-channel int8, 32 outlier input channels kept; the faster int8 CPU kernel here, measured at start),
    # or a kernel named: int8:int_mm, int8:dynamic, int8:weight_only (kernels.int8)
    quantization: str = "none"

    def __post_init__(self):
        check(isinstance(self.name, str) and (self.name in ENGINES or ":" in self.name), "engine.name",
              f"{self.name!r}: use one of {sorted(ENGINES)} or an import path 'package.module:Class'")
        check(_is_int(self.max_num_seqs) and self.max_num_seqs >= 1, "engine.max_num_seqs",
              f"must be an integer >= 1, e.g. 64, got {self.max_num_seqs!r}")
        check(_is_int(self.max_num_batched_tokens) and self.max_num_batched_tokens >= 1,
              "engine.max_num_batched_tokens",
              f"must be an integer >= 1, e.g. 2048, got {self.max_num_batched_tokens!r}")
        check(_is_int(self.block_size) and self.block_size >= 1 and self.block_size & (self.block_size - 1) == 0,
              "engine.block_size", f"must be a power of 2 such as 16, got {self.block_size!r}")
        try:
            self._kv_bytes, self._kv_fraction = parse_memory(self.kv_cache_memory)
        except ValueError as e:
            check(False, "engine.kv_cache_memory", str(e))
        check(isinstance(self.enable_prefix_caching, bool), "engine.enable_prefix_caching",
              f"must be true or false, got {self.enable_prefix_caching!r}")
        check(_is_int(self.max_model_len) and self.max_model_len >= 0, "engine.max_model_len",
              f"must be an integer >= 0 (0 = the model's context length), got {self.max_model_len!r}")
        check(self.quantization in QUANTIZATIONS, "engine.quantization",
              f"{self.quantization!r}: use one of {list(QUANTIZATIONS)}")
        check(_is_int(self.max_loras) and self.max_loras >= 1, "engine.max_loras",
              f"must be an integer >= 1 (adapters loaded at once), e.g. 4, got {self.max_loras!r}")

    def kv_cache_bytes(self, device: torch.device) -> int:
        """The KV pool's size on `device`: the bytes given, or the fraction of its free memory now."""
        if self._kv_fraction is not None:
            return int(_available_bytes(device) * self._kv_fraction)
        return self._kv_bytes


QUANTIZATIONS = ("none", "int8", "int8:int_mm", "int8:dynamic", "int8:weight_only")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
class ReqState:
    """The engine's side of a request: sampling inputs, detokenizer and the text produced so far."""

    generator: torch.Generator
    detok: IncrementalDetokenizer
    text: str = ""                    # completion text with stop strings applied
    emitted: int = 0                  # chars of `text` already handed out as deltas
    prompt_logprobs_sent: bool = False
    guide: Guide | None = None        # a grammar guide's state (SamplingParams.guide)
    model: str = ""                   # its metrics' model label: "" (the base) or the adapter's name
    arrival: float = 0.0              # time.monotonic() when it was added
    last_token: float | None = None   # when its latest token was sampled


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string (held back)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class LLMEngine(Engine):
    def __init__(self, model: torch.nn.Module, tokenizer, config: EngineConfig | None = None,
                 eos_token_ids: Sequence[int] | None = None):
        from actors.model.tokenizer import stop_token_ids

        self.config = cfg = config or EngineConfig()
        self.tokenizer = tokenizer
        p = next(model.parameters())
        ctx = int(model.config.max_position_embeddings)
        self._max_model_len = min(ctx, cfg.max_model_len) if cfg.max_model_len else ctx
        per_block = kv_bytes_per_block(model, cfg.block_size, p.dtype)
        num_blocks = cfg.kv_cache_bytes(p.device) // per_block
        need = -(-self._max_model_len // cfg.block_size) + 1  # one full-length sequence + the padding block
        if num_blocks < need:
            raise ValueError(
                f"kv_cache_memory={cfg.kv_cache_memory!r} gives {num_blocks} KV blocks of {cfg.block_size} tokens "
                f"({per_block / 2**20:.2f} MiB each), but one sequence of max_model_len={self._max_model_len} "
                f"tokens needs {need} ({need * per_block / 2**30:.2f} GiB); raise kv_cache_memory or lower "
                "max_model_len")
        self.kv = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv, cfg.max_num_seqs, cfg.max_num_batched_tokens)
        self.runner = ModelRunner(model, num_blocks, cfg.block_size, cfg.quantization)
        self.loras = LoRAManager(self.runner.model.lora_projs, cfg.max_loras, p.dtype, p.device)
        self._lora_waiting: collections.deque[Request] = collections.deque()  # their adapter has no room yet
        self.failed: list[tuple[str, Exception]] = []   # requests dropped inside a step, for the driver to report
        self.vocab_size = int(model.config.vocab_size)
        self.eos_ids = frozenset(int(t) for t in (stop_token_ids(tokenizer) if eos_token_ids is None
                                                  else eos_token_ids))
        self._skip_ids = frozenset(int(i) for i in tokenizer.all_special_ids)
        self._guides: GuideFactory | None = None   # built on the first guided request
        self.num_steps, self.step_seconds = 0, 0.0
        self.metrics = EngineMetrics()

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def stats(self) -> dict:
        kv = self.kv
        return {"steps": self.num_steps, "step_seconds": round(self.step_seconds, 3),
                "running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_blocks_total": kv.usable_blocks, "kv_blocks_free": kv.num_free_blocks,
                "prefix_cache_queries": kv.queries, "prefix_cache_hits": kv.hits,
                "preemptions": self.scheduler.num_preemptions,
                "lora_loaded": [a.ref.name for a in self.loras.loaded.values()], "lora_loads": self.loras.loads,
                "lora_running": sorted({r.adapter.ref.name for r in self.scheduler.running if r.adapter}),
                "lora_waiting": sorted({r.params.adapter.name for r in self._lora_waiting}),
                "max_loras": self.loras.max_loras, "metrics": self.metrics.snapshot()}

    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        if request_id in self.scheduler or any(r.request_id == request_id for r in self._lora_waiting):
            raise ValueError(f"request_id {request_id!r} is already running; use a unique id")
        ids = [int(t) for t in prompt_token_ids]
        if not ids:
            raise ValueError("prompt is empty: give at least one token")
        room = self.max_model_len - len(ids)
        if room < (1 if params.max_tokens else 0):
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
        state = ReqState(gen, IncrementalDetokenizer(self.tokenizer, self._skip_ids),
                         model=params.adapter.name if params.adapter is not None else "", arrival=time.monotonic())
        if params.guide is not None:
            if self._guides is None:
                self._guides = GuideFactory(self.tokenizer, self.vocab_size)
            state.guide = self._guides.start(params.guide)
        req = Request(request_id, ids, params, state=state)
        if params.adapter is None:
            self.scheduler.add(req)
        elif self._lora_waiting or not self._take_adapter(req):
            self._lora_waiting.append(req)

    def _take_adapter(self, req: Request) -> bool:
        """Load (or share) the request's adapter and queue it; False when every adapter slot is in use."""
        try:
            a = self.loras.acquire(req.params.adapter)
        except AdapterError as e:
            raise ValueError(str(e)) from None
        if a is None:
            return False
        req.adapter, req.kv.root = a, a.root
        self.scheduler.add(req)
        return True

    def _release(self, req: Request) -> None:
        if req.adapter is not None:
            self.loras.release(req.adapter)
            req.adapter = None

    def _admit_lora_waiting(self) -> None:
        """Queue the requests whose adapter now has a slot, oldest first (the rest keep waiting in order)."""
        while self._lora_waiting:
            try:
                if not self._take_adapter(self._lora_waiting[0]):
                    break
            except ValueError as e:  # the adapter's folder went bad while the request waited: it fails alone
                self.failed.append((self._lora_waiting[0].request_id, e))
            self._lora_waiting.popleft()

    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        self._admit_lora_waiting()
        sched = self.scheduler.schedule()
        out = self.runner.execute(sched, self._to_sample(sched))
        outputs = self.update(sched, out)
        self.num_steps += 1
        self.step_seconds += time.perf_counter() - t0
        return outputs

    def _stop_ids(self, p: SamplingParams) -> frozenset[int]:
        return frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else self.eos_ids)

    def _to_sample(self, sched) -> dict[str, SampleRow]:
        """Requests whose every token is computed after this step, and that may still produce one."""
        rows = {}
        for req, n in sched.scheduled:
            if req.num_computed + n == req.num_tokens and req.params.max_tokens > req.num_output:
                rows[req.request_id] = SampleRow(req.params, req.state.generator, req.prompt_ids, req.output_ids,
                                                 self._stop_ids(req.params),
                                                 req.state.guide.allowed() if req.state.guide else None)
        return rows

    def update(self, sched, out) -> list[RequestOutput]:
        outputs = []
        now = time.monotonic()
        for req, n in sched.scheduled:
            self.scheduler.computed(req, n)
            if req.request_id in out.prompt_logprobs:
                if not req.prompt_logprobs:
                    req.prompt_logprobs.append(None)  # the first prompt token has no context to score it
                req.prompt_logprobs.extend(out.prompt_logprobs[req.request_id])
            new: list[int] = []
            lps: list[TokenLogprobs] = []
            if req.request_id in out.sampled:
                tok, lp = out.sampled[req.request_id]
                new = [tok]
                req.token_ids.append(tok)
                self._count_token(req, now)
                if lp is not None:
                    lps.append(lp)
                    req.logprobs.append(lp)
                self._apply_stop_rules(req, tok)
            elif req.num_computed == req.num_tokens and req.params.max_tokens == 0:
                req.finish_reason = "length"  # scored the prompt; nothing to generate
            elif req.num_computed != req.num_tokens:
                continue  # a prefill chunk: nothing to show yet
            outputs.append(self._output(req, new, lps))
        return outputs

    def _count_token(self, req: Request, now: float) -> None:
        st, m = req.state, self.metrics
        if st.last_token is None:
            m.observe("time_to_first_token_seconds", st.model, now - st.arrival)
            m.prompt_tokens[st.model] += len(req.prompt_ids)
        else:
            m.observe("inter_token_latency_seconds", st.model, now - st.last_token)
        st.last_token = now
        m.generation_tokens[st.model] += 1

    def _count_finish(self, req: Request, reason: str) -> None:
        st, m = req.state, self.metrics
        if st.last_token is None and reason != "abort":   # scored the prompt only
            m.prompt_tokens[st.model] += len(req.prompt_ids)
        m.success[(st.model, reason)] += 1
        m.observe("e2e_request_latency_seconds", st.model, time.monotonic() - st.arrival)

    def _apply_stop_rules(self, req: Request, tok: int) -> None:
        p, st = req.params, req.state
        if tok in self._stop_ids(p):
            req.finish_reason = "stop"  # the stop token's text never reaches the output
        else:
            st.text += st.detok.push(tok)
            _check_stop_strings(req)
            if st.guide is not None:
                st.guide.advance(tok, st.text)
                if st.guide.done and req.finish_reason is None:
                    req.finish_reason = "stop"    # a whole-output grammar completed (response_format)
        if req.finish_reason is None and (req.num_output >= p.max_tokens or req.num_tokens >= self.max_model_len):
            req.finish_reason = "length"

    def _output(self, req: Request, new: list[int], lps: list[TokenLogprobs]) -> RequestOutput:
        st, p = req.state, req.params
        finished = req.finish_reason is not None
        if finished:
            ready = len(st.text)
            self.scheduler.finish(req)
            self._release(req)
            self._count_finish(req, req.finish_reason)
        else:  # hold back a tail that might be the start of a stop string
            ready = len(st.text) - _stop_prefix_len(st.text, p.stop) if p.stop else len(st.text)
        ready = max(ready, st.emitted)
        delta, st.emitted = st.text[st.emitted:ready], ready
        prompt_lps = None
        if p.prompt_logprobs is not None and not st.prompt_logprobs_sent:
            prompt_lps, st.prompt_logprobs_sent = list(req.prompt_logprobs), True
        return RequestOutput(
            request_id=req.request_id, new_token_ids=new, token_ids=list(req.output_ids), delta_text=delta,
            text=st.text[:ready], finished=finished, finish_reason=req.finish_reason,
            prompt_tokens=len(req.prompt_ids), completion_tokens=req.num_output, logprobs=lps,
            prompt_logprobs=prompt_lps, cached_tokens=req.num_cached_tokens)

    def abort(self, request_id: str) -> bool:
        for req in self._lora_waiting:
            if req.request_id == request_id:
                self._lora_waiting.remove(req)
                return True
        req = self.scheduler.abort(request_id)
        if req is not None:
            self._release(req)
            self._count_finish(req, "abort")
        return req is not None

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._lora_waiting)


def _check_stop_strings(req: Request) -> None:
    st, stops = req.state, req.params.stop
    if not stops:
        return
    # a stop string can only end inside the newest piece; search from just before it
    start = max(0, st.emitted - max(len(s) for s in stops))
    hits = [i for i in (st.text.find(s, start) for s in stops) if i >= 0]
    if hits:
        st.text = st.text[:min(hits)]
        req.finish_reason = "stop"


ENGINES: dict[str, type[Engine]] = {"paged": LLMEngine}


def make_engine(model: torch.nn.Module, tokenizer, config: EngineConfig | None = None) -> Engine:
    """The engine class `config.name` names (a key of ENGINES or an import path "module:Class") over `model`."""
    config = config or EngineConfig()
    name = config.name
    if name in ENGINES:
        cls = ENGINES[name]
    elif ":" in name:
        mod, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"engine {name!r} cannot be imported ({e}); use one of {sorted(ENGINES)} or "
                             "'package.module:Class'") from None
    else:
        raise ValueError(f"unknown engine {name!r}; use one of {sorted(ENGINES)} or 'package.module:Class'")
    return cls(model, tokenizer, config)


# ---------------------------------------------------------------------------------------------------
# asyncio driver


def fold_outputs(outputs: Sequence[RequestOutput]) -> RequestOutput:
    """A request's outputs folded into its final one from the deltas alone (a stream that crossed a process
    boundary carries deltas only): every step's tokens, text and logprobs, and the prompt logprobs."""
    if not outputs or not outputs[-1].finished:
        raise RuntimeError("the request ended without a final output")
    ids = [t for o in outputs for t in o.new_token_ids]
    prompt_lps = next((o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None), None)
    return replace(outputs[-1], new_token_ids=ids, token_ids=list(ids), text="".join(o.delta_text for o in outputs),
                   logprobs=[lp for o in outputs for lp in o.logprobs], prompt_logprobs=prompt_lps)


async def collect(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    return fold_outputs([out async for out in outputs])


def set_thread_niceness(niceness: int | None) -> bool:
    """Give the calling thread (and the OpenMP threads it starts, which inherit it) this nice value. Ray runs
    worker processes at nice 15, so any busier process at 0 preempts one of the step's threads and the other waits
    at the next barrier. Lowering a nice value needs CAP_SYS_NICE; without it the thread keeps its value."""
    if niceness is None or not hasattr(os, "setpriority"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        return True
    except (PermissionError, OSError):
        return False


class AsyncEngine:
    """Serializes all engine access through one background task; requests stream RequestOutputs.

    add/abort are queued and applied by the worker thread between steps, so the event loop never waits
    for a forward pass and the engine never sees two threads.
    """

    def __init__(self, engine: Engine, thread_niceness: int | None = None):
        self.engine = engine
        # one dedicated thread: torch keeps an OpenMP team per calling thread, and asyncio.to_thread's pool hands
        # steps to whichever worker is free, so several teams competed for the cores
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="engine-step", initializer=set_thread_niceness,
            initargs=(thread_niceness,))
        self._commands: collections.deque[tuple[str, str, Any, Any]] = collections.deque()
        self._queues: dict[str, asyncio.Queue] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    async def stats(self) -> dict:
        """The engine's counters, read on its step thread (between steps, never during one)."""
        fn = getattr(self.engine, "stats", None)
        if fn is None:
            return {}
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

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
        async for batch in self.generate_batches(prompt_token_ids, params, request_id):
            for out in batch:
                yield out

    async def generate_batches(self, prompt_token_ids: Sequence[int], params: SamplingParams,
                               request_id: str | None = None) -> AsyncIterator[list[RequestOutput]]:
        """Like `generate`, but every output already waiting comes at once (one message per batch when the
        outputs cross a process boundary, however far the consumer fell behind)."""
        self._ensure_loop()
        rid = request_id or uuid.uuid4().hex
        q: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = q
        self._commands.append(("add", rid, list(prompt_token_ids), params))
        self._wake.set()
        finished = False
        try:
            while not finished:
                items = [await q.get()]
                while not q.empty():
                    items.append(q.get_nowait())
                batch = []
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                    batch.append(item)
                    finished = finished or item.finished
                yield batch
        finally:
            self._queues.pop(rid, None)
            if not finished:  # client disconnected or consumer stopped early
                self._commands.append(("abort", rid, None, None))
                self._wake.set()

    async def complete(self, prompt_token_ids: Sequence[int], params: SamplingParams,
                       request_id: str | None = None) -> RequestOutput:
        """The finished output with every step's logprobs (and the prompt's) gathered."""
        return await collect(self.generate(prompt_token_ids, params, request_id))

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
        failed = getattr(self.engine, "failed", None)
        while failed:
            results.append(failed.pop())
        return results

    async def _run(self) -> None:
        while True:
            if not self._commands and not self.engine.has_unfinished():
                self._wake.clear()
                await self._wake.wait()
            try:
                results = await asyncio.get_running_loop().run_in_executor(self._executor, self._work)
            except Exception as e:  # engine state is unknown after a failed step: fail every request
                for rid in list(self._queues):
                    self.engine.abort(rid)
                    self._queues[rid].put_nowait(RuntimeError(f"engine step failed: {e!r}"))
                continue
            for rid, item in results:
                q = self._queues.get(rid)
                if q is not None:
                    q.put_nowait(item)
