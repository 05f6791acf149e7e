"""Serving: a continuous-batching engine over a paged KV cache behind an `Engine` interface, an OpenAI-compatible FastAPI app, Ray Serve replicas.

Ray is imported only by `actors.serve.deployment`; the engine, protocol and API import without it.
"""
from actors.serve.engine import AsyncEngine, Engine, EngineConfig, LLMEngine, RequestOutput, SamplingParams, make_engine

__all__ = ["Engine", "LLMEngine", "EngineConfig", "AsyncEngine", "SamplingParams", "RequestOutput", "make_engine"]
