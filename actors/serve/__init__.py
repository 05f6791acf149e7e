"""Serving: the OpenAI-compatible FastAPI app (`openai_api`, `protocol`), the serve config (`config.ServeConfig`,
with the engine's `EngineConfig` nested as `engine`) and the Ray Serve shell (`deployment`).

The engine itself is the shared package `actors.engine`. Ray is imported only by `actors.serve.deployment` and
`router` (the prefix-aware request router); the
config, protocol and API import without it.
"""
from actors.serve.config import ServeConfig

__all__ = ["ServeConfig"]
