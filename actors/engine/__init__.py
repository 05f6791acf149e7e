"""The serving engine, shared by every stage that generates (serve replicas, eval workers, the fine-tune sample
hook, `jobs.chat`): continuous batching over a paged KV cache with prefix caching, behind the `Engine` interface.

    engine.py     Engine, LLMEngine (schedule -> execute -> update), EngineConfig, make_engine, AsyncEngine,
                  IncrementalDetokenizer, parse_memory
    scheduler.py  continuous batching, chunked prefill, preemption
    kv_cache.py   KV block manager with prefix caching (bookkeeping only)
    runner.py     ModelRunner: one flattened forward over the paged cache (on its own copy of the module tree)
    sampling.py   SamplingParams and the batched sampler
    lora.py       many LoRA adapters in one batch (per-row low-rank updates), the adapters an engine holds (LRU)
    guide.py      grammar-guided decoding (llguidance): a request's tokens masked to a Lark/JSON-schema grammar,
                  lazily from a trigger string (tool calls)

No Ray here; `actors.serve.deployment` is the Ray Serve shell around it.
"""
from actors.engine.engine import (ENGINES, AsyncEngine, Engine, EngineConfig, IncrementalDetokenizer, LLMEngine,
                                  RequestOutput, make_engine, parse_memory)
from actors.engine.guide import GrammarSpec
from actors.engine.lora import AdapterError, AdapterRef, adapter_problem
from actors.engine.sampling import SamplingParams, TokenLogprobs

__all__ = ["GrammarSpec", "AdapterRef", "AdapterError", "adapter_problem", "Engine", "LLMEngine", "EngineConfig", "AsyncEngine", "SamplingParams", "TokenLogprobs", "RequestOutput",
           "make_engine", "ENGINES", "IncrementalDetokenizer", "parse_memory"]
