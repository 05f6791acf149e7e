"""Agent stage: an agent loop over the OpenAI chat API whose tools are Ray actors (Lagent/AgentLego shaped).

Ray-free: `tools` (tool protocol, calculator, sandboxed python), `sandbox`, `config`, `report`. Ray: `actor.ToolActor`,
and `loop.Agent` which calls tool actor handles. Nothing here imports the model or torch.
"""
from actors.agent.config import AgentConfig
from actors.agent.tools import Calculator, SandboxPython, Tool, ToolArgumentError, ToolResult, make_tool

__all__ = ["AgentConfig", "Calculator", "SandboxPython", "Tool", "ToolArgumentError", "ToolResult", "make_tool",
           "Agent", "Transcript", "make_client", "ToolActor", "start_tools", "evaluate_agent"]

_LAZY = {"Agent": "actors.agent.loop", "Transcript": "actors.agent.loop", "make_client": "actors.agent.loop",
         "ToolActor": "actors.agent.actor", "start_tools": "actors.agent.actor",
         "evaluate_agent": "actors.agent.report"}


def __getattr__(name: str):
    # Ray/openai-backed names load on first use so `import actors.agent` (configs, tools) stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'actors.agent' has no attribute {name!r}")
