"""An agent run end to end: real Serve over HTTP, a model that really emits a tool call, tool actors on Ray."""
from __future__ import annotations

import json

import pytest

from conftest import free_port
from tests.helpers import make_tiny_model

pytestmark = [pytest.mark.ray, pytest.mark.e2e]
APP = "agent-e2e"


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from actors.serve.deployment import start_server, stop_server

    tiny = make_tiny_model(tmp_path_factory.getbasetemp())
    url = start_server({"model": str(tiny.dir), "model_name": "tiny", "port": free_port(),
                        "engine": {"kv_cache_memory": "64MiB"}}, app_name=APP)
    yield url + "/v1", tiny
    stop_server(APP)


def test_agent_calls_the_calculator_actor_through_the_openai_api(served, tool_actors):
    from actors.agent.loop import Agent, make_client

    base_url, tiny = served
    agent = Agent(make_client(base_url), "tiny", tool_actors, max_steps=2, max_tokens=48)
    transcript = agent.run(tiny.prompt_messages)
    calls = [c for step in transcript.steps for c in step.tool_calls]
    assert calls, transcript.to_text()
    first = calls[0]
    expr = tiny.record["expression"]
    assert first.name == "calculator" and first.valid and first.ok
    assert first.args == {"expression": expr}
    # the ToolActor computed the real value, and it went back to the model as a `tool` message
    assert first.result == tiny.record["answer"]
    tool_msgs = [m for m in transcript.messages if m["role"] == "tool"]
    assert tool_msgs and tool_msgs[0]["content"] == tiny.record["answer"]
    assert "calculator" in transcript.to_text()
    assert transcript.stopped_reason in ("answer", "max_steps")
    json.dumps(transcript.to_dict())  # serializable for the run report


def test_concurrent_agent_eval_keeps_each_records_own_result(served, tool_actors):
    """Conversations run at once share the server's batches; every row still belongs to its own record, in order."""
    from actors.agent.loop import Agent, make_client
    from actors.agent.report import evaluate_agent
    from actors.tooltask import prompt_messages

    base_url, tiny = served
    agent = Agent(make_client(base_url), "tiny", tool_actors, max_steps=2, max_tokens=48)
    records = [{**tiny.record, "id": f"r{i}"} for i in range(6)]
    assert prompt_messages(records[0]) == tiny.prompt_messages
    one = evaluate_agent(agent, records, n_transcripts=1, concurrency=1)
    many = evaluate_agent(agent, records, n_transcripts=1, concurrency=4)
    assert [r["id"] for r in many["records"]] == [f"r{i}" for i in range(6)]
    for a, b in zip(one["records"], many["records"]):
        assert b["first_tool_call_valid"] and b["tool_calls"] >= 1
        assert (a["first_tool_call_valid"], a["tool_calls"], a["tool_errors"]) == \
            (b["first_tool_call_valid"], b["tool_calls"], b["tool_errors"])
    assert many["n"] == 6 and many["valid_tool_call_rate"] == one["valid_tool_call_rate"] == 1.0


MCP_SERVER = '''
import sys
sys.path.insert(0, {repo!r})
from typing import Annotated
from pydantic import Field
from mcp.server.mcpserver import MCPServer
from actors.tooltask import CALCULATOR_SPEC, PYTHON_SPEC, run_tool

server = MCPServer("arithmetic")
# the same parameter descriptions as the contract's specs: the tools block (and so the prompt the tiny model
# was trained on) shows them
DESC = {{s["function"]["name"]: next(iter(s["function"]["parameters"]["properties"].values()))["description"]
        for s in (CALCULATOR_SPEC, PYTHON_SPEC)}}


@server.tool(name="calculator", description=CALCULATOR_SPEC["function"]["description"])
def calculator(expression: Annotated[str, Field(description=DESC["calculator"])]) -> str:
    return run_tool("calculator", expression)


@server.tool(name="python", description=PYTHON_SPEC["function"]["description"])
def python(code: Annotated[str, Field(description=DESC["python"])]) -> str:
    return run_tool("python", code)


server.run()
'''


def test_the_agent_uses_a_calculator_that_exists_only_on_an_outside_mcp_server(served, tmp_path):
    """agent.tools is empty: the tools come from an MCP server (written here, spoken to over stdio by the
    official SDK inside a ToolActor); the model's call reaches it and its answer comes back."""
    import sys

    import ray

    from actors.agent.actor import start_tools
    from actors.agent.config import AgentConfig
    from actors.agent.loop import Agent, make_client
    from conftest import REPO

    script = tmp_path / "arith_mcp.py"
    script.write_text(MCP_SERVER.format(repo=str(REPO)))
    cfg = AgentConfig(tools=[], mcp_servers=[[sys.executable, str(script)]], max_steps=2, max_tokens=48)
    tools = start_tools(cfg.tools, cfg.mcp_servers)
    try:
        base_url, tiny = served
        agent = Agent.from_config(cfg, make_client(base_url), "tiny", tools)
        assert [s["function"]["name"] for s in agent.specs] == ["calculator", "python"]
        from actors.tooltask import TOOLS, tools_block
        assert tools_block(agent.specs) == tools_block(TOOLS)   # the prompt the tiny model knows
        transcript = agent.run(tiny.prompt_messages)
        first = transcript.tool_calls[0]
        assert first.name == "calculator" and first.ok, transcript.to_text()
        assert first.result == tiny.record["answer"]
    finally:
        for a in tools.values():
            ray.kill(a)
