"""`ToolActor`: a thin Ray actor around one Ray-free tool from `tools.py`."""
from __future__ import annotations

from typing import Any

import ray

from actors.agent.tools import TOOL_CLASSES, make_tool

# Tools are pure CPU micro-work; a fraction of a CPU lets them coexist with trainer/serve actors on 2 cores.
TOOL_NUM_CPUS = 0.1


@ray.remote(num_cpus=TOOL_NUM_CPUS)
class ToolActor:
    def __init__(self, tool_name: str, **kw: Any):
        self.tool = make_tool(tool_name, **kw)

    def spec(self) -> dict:
        return self.tool.spec()

    def call(self, args: Any) -> dict:
        # Tool.call never raises: failures come back as {"ok": False, "error": ...}.
        return self.tool.call(args).to_dict()


def start_tools(names: list[str], **kw: Any) -> dict[str, "ray.actor.ActorHandle"]:
    """One ToolActor per name, in order (the order is the order of the specs sent to the model)."""
    for n in names:
        # Fail here, not later inside an actor constructor where the error surfaces on first use.
        if n not in TOOL_CLASSES:
            raise ValueError(f"unknown tool {n!r}; available tools: {sorted(TOOL_CLASSES)}")
    return {n: ToolActor.remote(n, **kw) for n in names}


__all__ = ["ToolActor", "start_tools", "TOOL_NUM_CPUS"]
