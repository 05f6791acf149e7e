"""Agent stage: safe tools, their specs, ToolActor over real Ray, the loop's tool dispatch, the report.

The end-to-end run against a served model lives in the pipeline test; here the loop is exercised
without an LLM (dispatch of hand-written tool calls, and a real client pointed at a closed port).
"""
from __future__ import annotations

import json
import random

import pytest

from actors.agent.config import AgentConfig
from actors.agent.tools import Calculator, SandboxPython, ToolArgumentError, ToolResult, make_tool, validate_arguments
from actors.common.config import ConfigError, from_dict
from actors.data import synthetic

# (expression, the same expression computed by Python itself)
ARITHMETIC = [
    ("2 + 3 * 4", 2 + 3 * 4),
    ("(2 + 3) * 4", (2 + 3) * 4),
    ("-5 * -(3 - 10)", -5 * -(3 - 10)),
    ("-2 ** 2", -2 ** 2),                 # precedence: ** binds tighter than unary minus
    ("2 ** 3 ** 2", 2 ** 3 ** 2),         # right-associative
    ("7 // 2 + 7 % 3", 7 // 2 + 7 % 3),
    ("-7 // 2", -7 // 2),
    ("1234 - 5678", 1234 - 5678),
    ("9876 * 5432", 9876 * 5432),
    ("10 - 2 - 3", 10 - 2 - 3),
]

UNSAFE = [
    "__import__('os').system('x')",
    "a.b",
    "x",
    "'abc'",
    "lambda: 1",
    "[i for i in (1, 2)]",
    "open('/etc/passwd')",
    "(1).real",
    "True + 1",
    "1 if 1 else 2",
    "1 < 2",
    "1 ^ 2",
]


# ------------------------------------------------------------------------------------------ tools (no Ray)
@pytest.fixture(scope="module")
def python_tool():
    tool = SandboxPython({"wall_s": 20})
    yield tool
    tool.close()


def _run_python(code: str) -> str:
    """What the arithmetic python evaluator of the tool contract returns (eval's reference, actors.tooltask)."""
    from actors.tooltask import run_tool

    return run_tool("python", code)


def test_tools_compute_arithmetic(python_tool):
    for expr, expected in ARITHMETIC:
        for tool, key in ((Calculator(), "expression"), (python_tool, "code")):
            res = tool.call({key: expr})
            assert res.ok and res.error is None, res
            assert res.content == str(expected)


def test_python_tool_runs_real_python_with_state_in_its_sandbox(python_tool):
    assert python_tool.call({"code": "6 / 3"}).content == "2"           # numbers as the calculator prints them
    assert python_tool.call({"code": "vals = [3, 1, 2]\nsorted(vals)"}).content == "[1, 2, 3]"
    assert python_tool.call({"code": "import numpy as np\nprint(np.mean(vals))"}).content == "2.0"
    res = python_tool.call({"code": "open('/etc/shadow').read()"})
    assert not res.ok and "FileNotFoundError" in res.error
    res = python_tool.call({"code": "import os\nos.system('id')\nos.fork()"})
    assert not res.ok and "PermissionError" in res.error


def test_integer_results_print_without_decimal_point():
    c = Calculator()
    assert c.call({"expression": "6 / 3"}).content == "2"
    assert c.call({"expression": "7 / 2"}).content == "3.5"
    assert c.call({"expression": "2 ** -2"}).content == "0.25"


def test_python_tool_functions(python_tool):
    for code in ("max(3, 7) ** 2", "abs(-12) + min(4, 2, 9)", "round(2.567, 2)"):
        assert python_tool.call({"code": code}).content == _run_python(code) == str(eval(code))
    # the calculator has no functions at all
    res = Calculator().call({"expression": "abs(-3)"})
    assert not res.ok and "not allowed" in res.error


@pytest.mark.parametrize("expr", UNSAFE)
def test_tools_reject_unsafe_expressions(expr):
    from actors.tooltask import ToolError

    res = Calculator().call({"expression": expr})
    assert isinstance(res, ToolResult)
    assert not res.ok and res.content == "" and res.error, (expr, res)
    with pytest.raises(ToolError):   # eval's reference evaluator of the python tool refuses them too
        _run_python(expr)


def test_rejection_messages_name_the_problem():
    from actors.tooltask import ToolError

    for code, why in (("x + 1", "names are not allowed"), ("a.b", "attribute"), ("'s'", "string"),
                      ("lambda: 1", "lambda"), ("__import__('os').system('x')", "__import__")):
        with pytest.raises(ToolError, match=why):
            _run_python(code)


def test_huge_results_rejected_before_computing(monkeypatch):
    import ast

    from actors import tooltask

    computed = []   # every integer power the evaluator actually computes

    def pow_spy(a, b):
        computed.append((a, b))
        return pow(a, b)

    monkeypatch.setitem(tooltask._BINOPS, ast.Pow, (pow_spy, "**"))
    c = Calculator()
    for expr in ("9**9**9", "10 ** 100000", "2 ** (2 ** 40)", "(10 ** 1000) ** 1000"):
        res = c.call({"expression": expr})
        assert not res.ok and "would exceed 4096 bits" in res.error, (expr, res)   # the size is predicted
    # only the small inner powers ran (9 ** 9, 2 ** 40, 10 ** 1000); the outer ones were refused unevaluated
    assert [(a, b) for a, b in computed] == [(9, 9), (2, 40), (10, 1000)]
    for expr, why in (("2.0 ** 100000", "result too large"), ("1e308 * 10", "not finite"),
                      ("(-8) ** 0.5", "not a real number")):
        res = c.call({"expression": expr})
        assert not res.ok and why in res.error, (expr, res)
    res = c.call({"expression": "1" * 100 + " * 2" * 1000})
    assert not res.ok and "expression too long" in res.error and "limit 500" in res.error


def test_division_by_zero_is_an_error_result():
    for expr in ("1 / 0", "5 // (3 - 3)", "4 % 0"):
        res = Calculator().call({"expression": expr})   # returned, not raised
        assert not res.ok and res.error == "division by zero"
        assert res.as_message_content() == "error: division by zero"


def test_argument_validation_names_argument_and_type():
    c = Calculator()
    with pytest.raises(ToolArgumentError) as e:
        c.validate({})
    assert e.value.argument == "expression" and "missing required argument 'expression'" in str(e.value)
    assert "string" in str(e.value)
    with pytest.raises(ToolArgumentError) as e:
        c.validate({"expression": 12})
    assert e.value.argument == "expression" and "must be a string" in str(e.value)
    with pytest.raises(ToolArgumentError) as e:
        c.validate({"expression": "1", "precision": 3})
    assert e.value.argument == "precision" and "unknown argument" in str(e.value)
    with pytest.raises(ToolArgumentError):
        c.validate(["1 + 1"])
    # booleans are not numbers in JSON schema terms
    with pytest.raises(ToolArgumentError):
        validate_arguments("t", {"type": "object", "properties": {"n": {"type": "integer"}}}, {"n": True})
    # call() turns the same failures into error results
    res = c.call({"expression": 12})
    assert not res.ok and "must be a string" in res.error


def test_specs_equal_the_fine_tuning_specs():
    from actors.tooltask import CALCULATOR_SPEC, PYTHON_SPEC

    assert make_tool("calculator").spec() == CALCULATOR_SPEC
    assert make_tool("python").spec() == PYTHON_SPEC
    assert [make_tool(t["function"]["name"]).spec() for t in synthetic.TOOLS] == synthetic.TOOLS
    with pytest.raises(ValueError, match="unknown tool 'shell'"):
        make_tool("shell")


def test_calculator_solves_every_synthetic_expression():
    _, heldout = synthetic.generate(0, 50, seed=3)
    c = Calculator()
    for r in heldout:
        assert c.call({"expression": r["expression"]}).content == r["answer"]


# ------------------------------------------------------------------------------------------ config
def test_agent_config_validation():
    cfg = from_dict(AgentConfig, {"tools": ["python"], "max_steps": 2})
    assert cfg.tools == ["python"] and cfg.max_steps == 2
    assert AgentConfig().tools == [t["function"]["name"] for t in synthetic.TOOLS]
    with pytest.raises(ConfigError, match=r"agent\.tools\[1\].*'shell'.*calculator"):
        AgentConfig(tools=["calculator", "shell"])
    with pytest.raises(ConfigError, match="agent.tools"):
        AgentConfig(tools=[])
    with pytest.raises(ConfigError, match="agent.max_steps"):
        AgentConfig(max_steps=0)
    with pytest.raises(ConfigError, match="agent.temperature"):
        AgentConfig(temperature=-1)
    with pytest.raises(ConfigError, match="unknown config key 'max_step'"):
        from_dict(AgentConfig, {"max_step": 3})


# ------------------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def agent(tool_actors):
    from conftest import free_port

    from actors.agent.loop import Agent, make_client

    # A real OpenAI client aimed at a port nobody listens on: dispatch never touches it, and run()
    # shows what the loop does when the server is unreachable.
    client = make_client(f"http://127.0.0.1:{free_port()}/v1", timeout_s=5.0)
    return Agent(client, "fullchain", tool_actors, max_steps=3, tool_timeout_s=30.0)


def test_tool_actor_matches_ray_free_tool(tool_actors):
    import ray

    cases = [("calculator", {"expression": e}) for e, _ in ARITHMETIC]
    cases += [("calculator", {"expression": "1 / 0"}), ("calculator", {"expression": "a.b"}),
              ("calculator", {"expr": "1"}), ("python", {"code": "max(3, 7) ** 2"}),
              ("python", {"code": "__import__('os')"})]
    got = ray.get([tool_actors[name].call.remote(args) for name, args in cases])
    for (name, args), out in zip(cases, got):
        assert out == make_tool(name).call(args).to_dict(), (name, args)
    assert ray.get(tool_actors["python"].spec.remote()) == synthetic.TOOLS[1]


def _call(name, arguments, cid="call_1"):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_agent_specs_follow_tool_order(agent):
    assert agent.specs == synthetic.TOOLS


def test_dispatch_unknown_tool(agent):
    [msg] = agent.execute_tool_calls([_call("shell", json.dumps({"cmd": "ls"}))])
    assert msg["role"] == "tool" and msg["tool_call_id"] == "call_1"
    assert msg["content"] == "error: unknown tool 'shell'; available: ['calculator', 'python']"


def test_dispatch_bad_json(agent):
    [rec] = agent.dispatch([_call("calculator", '{"expression": "1 + ')])
    assert rec.known_tool and not rec.valid and not rec.ok
    assert "not valid JSON" in rec.error and rec.tool_message()["content"].startswith("error: ")


def test_dispatch_missing_required_argument(agent):
    [rec] = agent.dispatch([_call("calculator", json.dumps({"expr": "1 + 1"}))])
    assert rec.known_tool and not rec.valid
    assert "missing required argument 'expression'" in rec.error
    [rec] = agent.dispatch([_call("python", json.dumps({"code": 5}))])
    assert not rec.valid and "'code' must be a string" in rec.error


def test_dispatch_valid_calls_through_tool_actors(agent):
    from openai.types.chat import ChatCompletionMessageFunctionToolCall

    # The SDK's own tool-call objects (what a reply carries) and plain dicts are both accepted.
    sdk_call = ChatCompletionMessageFunctionToolCall.model_validate(
        _call("calculator", json.dumps({"expression": "1234 * 5678"}), "call_a"))
    calls = [sdk_call, _call("python", json.dumps({"code": "max(3, 7) ** 2"}), "call_b"),
             _call("calculator", json.dumps({"expression": "1 / 0"}), "call_c")]
    recs = agent.dispatch(calls)
    assert [r.id for r in recs] == ["call_a", "call_b", "call_c"]
    assert recs[0].valid and recs[0].ok and recs[0].result == str(1234 * 5678)
    assert recs[1].valid and recs[1].ok and recs[1].result == str(max(3, 7) ** 2)
    # valid arguments, but the tool refuses: an error message, not an exception
    assert recs[2].valid and not recs[2].ok and recs[2].error == "division by zero"
    msgs = agent.execute_tool_calls(calls)
    assert [m["content"] for m in msgs] == [str(1234 * 5678), "49", "error: division by zero"]
    assert [m["name"] for m in msgs] == ["calculator", "python", "calculator"]


def test_run_reports_unreachable_server_and_evaluation_stays_honest(agent):
    from actors.agent.report import evaluate_agent

    tr = agent.run("What is 2 + 2?")
    assert tr.stopped_reason.startswith("error: APIConnectionError"), tr.stopped_reason
    assert tr.n_steps == 0 and tr.final_answer is None
    assert "user: What is 2 + 2?" in tr.to_text()

    _, heldout = synthetic.generate(0, 2, seed=1)
    rep = evaluate_agent(agent, heldout, n_transcripts=1)
    assert rep["n"] == 2 and rep["stopped_reasons"] == {"error": 2}
    assert rep["accuracy"] == rep["tool_call_rate"] == rep["valid_tool_call_rate"] == 0.0
    assert rep["mean_steps"] == 0.0 and len(rep["transcripts"]) == 1
    assert [r["id"] for r in rep["records"]] == [r["id"] for r in heldout]


# ------------------------------------------------------------------------------------------ report helpers
def test_report_prompt_and_answer_parsing():
    from actors.tooltask import last_number, prompt_messages, same_number

    _, heldout = synthetic.generate(0, 40, seed=7)
    rng = random.Random(0)
    for r in heldout:
        assert prompt_messages(r) == r["messages"][:1]
        # every final-answer template scores as correct
        for tpl in synthetic.ANSWER_TEMPLATES[r["lang"]]:
            text = tpl.format(e=r["expression"], a=r["answer"])
            assert same_number(last_number(text), r["answer"]), text
        wrong = str(int(r["answer"]) + rng.choice([-1, 1]))
        assert not same_number(last_number(f"The answer is {wrong}."), r["answer"])
    assert last_number("123 - 456 = -333") == "-333"
    assert last_number("no digits") is None and not same_number(None, "1")
    assert same_number("7.0", "7")
