"""Agent loop logic with a scripted model (fixed replies, in order) and real tool actors on Ray: memory, hooks,
parallel calls, the step cap, tool errors passed back; the ReAct and code styles' parsing and actions."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.ray


def _scripted_model_class():
    """Defined in a function so Ray pickles it by value into actors (the tests folder is not on workers' path)."""

    class ScriptedModel:
        """Stands in for the OpenAI client: `chat.completions.create` returns the next scripted reply and keeps
        the request it was given. A reply is (text, [(tool name, arguments dict), ...])."""

        def __init__(self, replies: list):
            self.replies = list(replies)
            self.requests: list[dict] = []
            self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

        def _create(self, **kw):
            self.requests.append(json.loads(json.dumps(kw, default=str)))
            text, calls = self.replies.pop(0) if self.replies else ("(script exhausted)", [])
            tool_calls = [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                          for i, (n, a) in enumerate(calls)] or None
            msg = SimpleNamespace(content=text, tool_calls=tool_calls)
            return SimpleNamespace(choices=[SimpleNamespace(message=msg,
                                                            finish_reason="tool_calls" if calls else "stop")])

    return ScriptedModel


def _script(*replies):
    return _scripted_model_class()([r if isinstance(r, tuple) else (r, []) for r in replies])


def test_function_calling_parallel_calls_errors_memory_and_hooks(tool_actors):
    from actors.agent.loop import Agent

    events = []
    model = _script(("", [("calculator", {"expression": "6 * 7"}), ("calculator", {"expression": "1 / 0"}),
                          ("python", {"code": "sum(range(5))"})]),
                    "6 * 7 is 42, 1 / 0 fails, the sum is 10.",
                    "It was 42.")
    agent = Agent(model, "m", tool_actors, max_steps=3, hooks=[lambda e, p: events.append(e)])
    tr = agent.run("compute")
    assert tr.stopped_reason == "answer" and tr.final_answer.startswith("6 * 7 is 42")
    calls = tr.steps[0].tool_calls                       # three calls of one reply, all dispatched
    assert [(c.ok, c.result) for c in calls] == [(True, "42"), (False, ""), (True, "10")]
    tool_msgs = [m for m in tr.messages if m["role"] == "tool"]
    assert [m["content"] for m in tool_msgs] == ["42", "error: division by zero", "10"]   # the error goes back
    assert model.requests[0]["tools"] == agent.specs
    assert events == ["reply", "tool_call", "tool_call", "tool_call", "reply", "stop"]
    # memory: the next turn continues the same conversation
    tr2 = agent.run("and the first result?", history=tr.messages)
    assert tr2.final_answer == "It was 42."
    sent = model.requests[-1]["messages"]
    assert sent[0]["content"] == "compute" and sent[-1]["content"] == "and the first result?"
    assert any(m.get("role") == "tool" and m["content"] == "42" for m in sent)


def test_step_cap_and_a_bad_call(tool_actors):
    from actors.agent.loop import Agent

    model = _script(("", [("calculator", {"expr": "1"})]), ("", [("shell", {"cmd": "ls"})]),
                    ("", [("calculator", {"expression": "2"})]))
    tr = Agent(model, "m", tool_actors, max_steps=2).run("go")
    assert tr.stopped_reason == "max_steps" and tr.n_steps == 2 and tr.final_answer is None
    first, second = tr.steps[0].tool_calls[0], tr.steps[1].tool_calls[0]
    assert not first.valid and "missing required argument 'expression'" in first.error
    assert not second.known_tool and "unknown tool 'shell'" in second.error


def test_react_actions_observations_and_final_answer(tool_actors):
    from actors.agent.styles import ReActAgent, parse_react

    model = _script('Thought: two sums at once\nAction: calculator\nAction Input: {"expression": "2 + {3}"}\n'
                    'Action: calculator\nAction Input: {"expression": "10 * 10"}',
                    "Thought: I know it\nFinal Answer: 5 and 100")
    tr = ReActAgent(model, "m", tool_actors, max_steps=3).run("what are 2+3 and 10*10?")
    assert tr.final_answer == "5 and 100" and tr.stopped_reason == "answer"
    first = tr.steps[0].tool_calls
    assert [c.name for c in first] == ["calculator", "calculator"]
    assert first[0].arguments == '{"expression": "2 + {3}"}' and "not allowed" in first[0].error
    assert first[1].result == "100"
    req = model.requests[0]
    assert "tools" not in req and req["stop"] == ["Observation:"]
    assert "calculator(expression: string)" in req["messages"][0]["content"]
    obs = model.requests[1]["messages"][-1]
    assert obs["role"] == "user" and obs["content"].endswith("Observation: 100")
    assert parse_react("The answer is 7.") == ([], None)


def test_code_agent_runs_blocks_in_a_sandboxed_kernel_with_tools(tool_actors):
    from actors.agent.styles import CodeAgent

    model = _script("I will compute it.\n```python\nx = calculator('6 * 7')\nprint('x =', x)\n```",
                    "```python\nimport os\nos.system('touch /tmp/escaped')\n1 / 0\n```",
                    "```python\nfinal_answer(int(x) + int(python('max(3, 7)')))\n```")
    tr = CodeAgent(model, "m", tool_actors, max_steps=4).run("6*7 plus max(3, 7)?")
    assert tr.stopped_reason == "answer" and tr.final_answer == "49", tr.to_text()
    assert [c.result for c in tr.steps[0].tool_calls] == ["42"]       # a tool call from inside the kernel
    assert tr.steps[2].tool_calls[0].name == "python" and tr.steps[2].tool_calls[0].result == "7"
    observations = [m["content"] for m in tr.messages if m["role"] == "user"][1:]
    assert observations[0] == "Observation:\nx = 42"
    assert "ZeroDivisionError" in observations[1]                    # the error is the model's to read
    assert "calculator(expression: string)" in model.requests[0]["messages"][0]["content"]


def test_code_agent_answers_without_code_and_stops_at_the_cap(tool_actors):
    from actors.agent.sandbox import SandboxConfig
    from actors.agent.styles import CodeAgent

    tr = CodeAgent(_script("Final Answer: 12"), "m", tool_actors).run("q")
    assert tr.final_answer == "12"
    tr = CodeAgent(_script(*["```python\nwhile True:\n    pass\n```"] * 2), "m", tool_actors, max_steps=2,
                   sandbox=SandboxConfig(wall_s=1)).run("q")
    assert tr.stopped_reason == "max_steps"
    assert "timed out" in [m["content"] for m in tr.messages if m["role"] == "user"][-1]


def test_config_names_every_style():
    from actors.agent import config, styles
    from actors.common.config import ConfigError

    assert tuple(styles.STYLES) == config.STYLES
    with pytest.raises(ConfigError, match="agent.style"):
        config.AgentConfig(style="plan")


def test_planner_hands_sub_tasks_to_worker_agents_each_an_actor(tool_actors):
    import ray

    from actors.agent.actor import AgentSession, Delegate, ToolActor
    from actors.agent.loop import Agent

    arith = AgentSession.remote("function_calling", _script(("", [("calculator", {"expression": "17 * 3"})]),
                                                            "17 * 3 = 51"),
                                "m", {"calculator": tool_actors["calculator"]})
    coder = AgentSession.remote("code", _script("```python\nfinal_answer(sum(range(4)))\n```"), "m",
                                {"python": tool_actors["python"]})
    delegate = ToolActor.remote("delegate", tool=Delegate({"arith": arith, "coder": coder}))
    try:
        planner = Agent(_script(("", [("delegate", {"worker": "arith", "task": "17 * 3"}),
                                      ("delegate", {"worker": "coder", "task": "the sum of 0..3"}),
                                      ("delegate", {"worker": "poet", "task": "a haiku"})]),
                                "51, and 6."), "m", {"delegate": delegate})
        assert planner.specs[0]["function"]["parameters"]["properties"]["worker"]["enum"] == ["arith", "coder"]
        tr = planner.run("17 * 3, and the sum of 0..3?")
        calls = tr.steps[0].tool_calls
        assert [c.result for c in calls[:2]] == ["17 * 3 = 51", "6"] and tr.final_answer == "51, and 6."
        assert not calls[2].valid and "poet" in calls[2].error          # the schema's enum holds
        # each worker kept its own conversation (memory) in its actor
        [worker_tr] = ray.get(arith.transcript.remote())
        assert worker_tr["messages"][0]["content"] == "17 * 3" and worker_tr["final_answer"] == "17 * 3 = 51"
    finally:
        for a in (arith, coder, delegate):
            ray.kill(a)


def test_search_docs_tool_cites_documents_and_the_report_counts_each_tool(ray_session, tmp_path):
    import ray

    from actors.agent.actor import start_tools
    from actors.agent.config import AgentConfig
    from actors.agent.loop import Agent
    from actors.agent.report import evaluate_agent
    from actors.agent.retrieval import HybridIndex

    docs = [{"id": "moon", "text": "The Moon orbits the Earth every 27.3 days."},
            {"id": "tea", "text": "Green tea is steeped at 80 degrees."},
            {"id": "poem", "text": "床前明月光，疑是地上霜。"}]
    HybridIndex.build(docs, dense=False).save(tmp_path / "idx")     # BM25 only: no embedding model needed here
    cfg = AgentConfig(tools=["calculator", "search_docs"],
                      tool_options={"search_docs": {"index": str(tmp_path / "idx")}})
    tools = start_tools(cfg.tools, options=cfg.tool_options)
    try:
        reply = ("", [("search_docs", {"query": "how long does the Moon take to orbit", "k": 1}),
                      ("calculator", {"expression": "27.3 * 2"})])
        model = _script(reply, "Two orbits take 54.6 days [moon].", reply, "Two orbits take 54.6 days [moon].",
                        reply, "Two orbits take 54.6 days [tea].")
        agent = Agent.from_config(cfg, model, "m", tools)
        record = {"id": "r0", "answer": "54.6", "messages": [{"role": "user", "content": "two lunar orbits?"}]}
        # a retrieval record is right when the answer cites its document, whatever numbers it holds
        cited = {"id": "r1", "kind": "retrieval", "answer": "moon", "messages": record["messages"]}
        rep = evaluate_agent(agent, [record, cited, {**cited, "id": "r2"}])
        assert [r["correct"] for r in rep["records"]] == [True, True, False]
        assert rep["accuracy_by_kind"] == {"arith": 1.0, "retrieval": 0.5}
        rep = evaluate_agent(Agent.from_config(cfg, _script(reply, "Two orbits take 54.6 days [moon]."), "m", tools),
                             [record])
        search = rep["records"][0]
        assert search["correct"] and rep["per_tool"] == {"calculator": {"calls": 1, "valid": 1, "ok": 1},
                                                         "search_docs": {"calls": 1, "valid": 1, "ok": 1}}
        tool_msg = [m for m in rep["transcript_dicts"][0]["messages"] if m["role"] == "tool"][0]
        assert tool_msg["content"].startswith("[moon] The Moon orbits")
    finally:
        for a in tools.values():
            ray.kill(a)
    from jobs.agent import docs_index

    AgentConfig(tools=["search_docs"])   # the agent stage builds the index over the data stage's documents
    with pytest.raises(ValueError, match="search_docs but no index: set agent.tool_options.search_docs.index"):
        docs_index(None, {"synthetic_heldout": "x"})


def test_styles_bench_two_step_prompts_and_style_subset_errors():
    """The bench's two-step prompts: seeded, in frames no training chain uses, answers right; a typo in
    --styles is a usage error naming the styles."""
    from actors.data.toolmix import _CHAIN_TRAIN
    from actors.tooltask import run_tool
    from bench.agent_styles import TWO_STEP_ASK, main, two_step_records

    recs = two_step_records(10)
    assert recs == two_step_records(10) and len({r["messages"][0]["content"] for r in recs}) == 10
    train_frames = {f for pair in _CHAIN_TRAIN for f in pair}
    assert not set(TWO_STEP_ASK) & train_frames
    for r in recs:   # the answer is the second step applied to the first expression's value
        q = r["messages"][0]["content"]
        first = re.search(r"(-?\d+ [-+*] \d+)", q).group(1)
        n = int(re.search(r"(\d+)(?: to the result| from the result)?\.$", q).group(1))
        v = int(run_tool("calculator", first))
        op = "+" if "add" in q else "-" if "subtract" in q else "*"
        assert r["answer"] == run_tool("calculator", f"{v} {op} {n}")
    with pytest.raises(SystemExit) as e:
        main(["--styles", "function_calling,reactt"])
    assert e.value.code == 2
