"""Serving: a plain engine behind an `Engine` interface, an OpenAI-compatible FastAPI app, Ray Serve replicas.

Ray is imported only by `actors.serve.deployment`; the engine, protocol and API import without it.
"""
from actors.serve.engine import AsyncEngine, Engine, PlainEngine, RequestOutput, SamplingParams

__all__ = ["Engine", "PlainEngine", "AsyncEngine", "SamplingParams", "RequestOutput"]
