"""The OpenAI API on Ray Serve, end to end: real Ray, real HTTP, the official `openai` client, a real tiny model."""
from __future__ import annotations

import asyncio
import json
import random
import re

import httpx
import openai
import pytest

from actors.data import synthetic
from actors.model.tokenizer import load_tokenizer
from actors.tooltask import parse_tool_calls
from conftest import free_port
from tests.helpers import make_tiny_model

pytestmark = [pytest.mark.ray, pytest.mark.e2e]
MODEL = "fullchain-test"
APP = "fullchain-test"


@pytest.mark.parametrize("pieces, calls, content", [
    (["Sure", ". <tool", '_call>{"name": "calculator", ', '"arguments": {"expression": "1 + 2"}}</tool_call>'],
     1, "Sure. "),
    # the turn ends with the last call left open but its JSON complete: sent at finish, as non-streaming
    (['<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"}}'], 1, ""),
    # cut off mid-JSON: no call; the text comes back as content, as the non-streaming response shows it
    (['<tool_call>{"name": "calcu'], 0, '<tool_call>{"name": "calcu'),
])
def test_tool_call_streamer_matches_non_streaming(pieces, calls, content):
    from actors.serve.openai_api import ToolCallStreamer

    s, sent_calls, sent = ToolCallStreamer(), [], ""
    for p in pieces:
        c, k = s.feed(p)
        sent, sent_calls = sent + c, sent_calls + k
    rest, last = s.finish()
    sent, sent_calls = sent + rest, sent_calls + last
    assert sent == content and len(sent_calls) == calls == s.calls
    _, expected, _ = parse_tool_calls("".join(pieces))
    assert sent_calls == expected


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def base_url(ray_session, tiny):
    from actors.serve.deployment import start_server, stop_server

    # fp32: scores here are checked against an fp32 forward (auto is bf16 on a CPU with native bf16)
    url = start_server({"model": str(tiny.dir), "model_name": MODEL, "port": free_port(), "dtype": "float32",
                        "engine": {"kv_cache_memory": "64MiB"}}, app_name=APP)
    yield url
    stop_server(APP)


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(client, base_url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    r = httpx.get(f"{base_url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_chat_streaming_joins_to_non_streaming(client):
    kw = dict(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Who art thou?"}],
              temperature=0, max_tokens=24)
    resp = client.chat.completions.create(**kw)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = resp.usage
    assert 1 <= u.completion_tokens <= 24 and u.total_tokens == u.prompt_tokens + u.completion_tokens

    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens


def test_tool_call(client, tiny):
    resp = client.chat.completions.create(model=MODEL, messages=tiny.prompt_messages, tools=synthetic.TOOLS,
                                          temperature=0, max_tokens=64)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": tiny.record["expression"]}

    # streamed: the call arrives whole as one delta.tool_calls chunk, no markup leaks into content
    chunks = list(client.chat.completions.create(model=MODEL, messages=tiny.prompt_messages,
                                                 tools=synthetic.TOOLS, temperature=0, max_tokens=64,
                                                 stream=True))
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].index == 0
    assert deltas[0].function.name == "calculator"
    assert json.loads(deltas[0].function.arguments) == {"expression": tiny.record["expression"]}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_renders_without_tools(client, tiny):
    resp = client.chat.completions.create(model=MODEL, messages=tiny.prompt_messages, tools=synthetic.TOOLS,
                                          tool_choice="none", temperature=0, max_tokens=8)
    plain = client.chat.completions.create(model=MODEL, messages=tiny.prompt_messages, temperature=0,
                                           max_tokens=8)
    assert resp.choices[0].message.tool_calls is None
    assert resp.usage.prompt_tokens == plain.usage.prompt_tokens
    assert resp.choices[0].message.content == plain.choices[0].message.content


def test_follow_up_turn_with_tool_result_is_accepted(client, tiny):
    first = client.chat.completions.create(model=MODEL, messages=tiny.prompt_messages, tools=synthetic.TOOLS,
                                           temperature=0, max_tokens=64).choices[0].message
    messages = [*tiny.prompt_messages,
                {"role": "assistant", "content": None,
                 "tool_calls": [tc.model_dump() for tc in first.tool_calls]},
                {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": tiny.record["answer"]}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, tools=synthetic.TOOLS,
                                          temperature=0, max_tokens=16)
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # the rendered history (both extra turns) is longer than the first prompt
    first_prompt = client.chat.completions.create(model=MODEL, messages=tiny.prompt_messages,
                                                  tools=synthetic.TOOLS, max_tokens=1).usage.prompt_tokens
    assert resp.usage.prompt_tokens > first_prompt


def test_completions_see_the_raw_markup(client, tiny):
    tok = load_tokenizer(tiny.dir)
    prompt = tok.apply_chat_template(tiny.prompt_messages, tools=synthetic.TOOLS, add_generation_prompt=True,
                                     tokenize=False)
    resp = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=64)
    assert resp.object == "text_completion" and resp.choices[0].finish_reason == "stop"
    _, calls, errors = parse_tool_calls(resp.choices[0].text)
    assert errors == [] and calls[0]["arguments"] == {"expression": tiny.record["expression"]}
    stream = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=64, stream=True)
    assert "".join(c.choices[0].text for c in stream) == resp.choices[0].text
    short = client.completions.create(model=MODEL, prompt="ROMEO:", temperature=0, max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5


def test_concurrent_requests_are_served_consistently(base_url):
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    prompts = ["ROMEO:", "JULIET:\nO", "First Citizen:", "KING HENRY:"]

    async def one(p):
        r = await client.completions.create(model=MODEL, prompt=p, temperature=0, max_tokens=12)
        return r.choices[0].text

    async def main():
        together = await asyncio.gather(*(one(p) for p in prompts))
        alone = [await one(p) for p in prompts]
        return together, alone

    together, alone = asyncio.run(main())
    assert together == alone


BAD_REQUESTS = [
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "function",
                                                                       "function": {"name": "x"}}}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 5}, "presence_penalty"),
    ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_token": 5}, "max_token"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, "max_tokens"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0]"),
]


@pytest.mark.parametrize("body,param", BAD_REQUESTS, ids=[p for _, p in BAD_REQUESTS])
def test_bad_chat_requests_get_openai_errors(base_url, body, param):
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert param.split("[")[0] in err["message"]


def test_malformed_json_unknown_model_and_client_errors(base_url, client):
    r = httpx.post(f"{base_url}/v1/chat/completions", content=b'{"model": "x", "messages": [',
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]

    r = httpx.post(f"{base_url}/v1/chat/completions", timeout=30,
                   json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "model" and r.json()["error"]["code"] == "model_not_found"

    r = httpx.post(f"{base_url}/v1/completions", json={"model": MODEL, "prompt": ["a", ""]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(f"{base_url}/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 0}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=17)
    assert e.value.body["param"] == "n"


@pytest.mark.parametrize("field,value,says", [("suffix", "end", "suffix (fill-in-the-middle) is not supported")])
def test_completion_request_rejects_unsupported_fields(field, value, says):
    import pydantic

    from actors.serve.protocol import CompletionRequest

    with pytest.raises(pydantic.ValidationError, match=rf"{field}[\s\S]*{re.escape(says)}"):
        CompletionRequest(model="m", prompt="hi", **{field: value})
    assert CompletionRequest(model="m", prompt="hi", **{field: None}).prompt == "hi"


# ---------------------------------------------------------------------------------------------------------------
# What evaluation harnesses and agents send


def test_chat_logprobs_n_and_seeds(client):
    msgs = [{"role": "user", "content": "Who art thou?"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=6, logprobs=True,
                                       top_logprobs=3)
    (choice,) = r.choices
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the chosen token is the top
    streamed = list(client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=6,
                                                   logprobs=True, stream=True))
    got = [e.token for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert got == [e.token for e in content]

    many = client.chat.completions.create(model=MODEL, messages=msgs, temperature=1.0, max_tokens=12, n=3, seed=11)
    assert [c.index for c in many.choices] == [0, 1, 2]
    again = client.chat.completions.create(model=MODEL, messages=msgs, temperature=1.0, max_tokens=12, n=3, seed=11)
    assert [c.message.content for c in many.choices] == [c.message.content for c in again.choices]
    # each choice samples on its own: a flatter distribution, so a peaked tiny model cannot make them agree by chance
    flat = client.chat.completions.create(model=MODEL, messages=msgs, temperature=2.0, max_tokens=12, n=3, seed=11)
    assert len({c.message.content for c in flat.choices}) > 1
    assert 3 <= many.usage.completion_tokens <= 36
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, temperature=1.0, max_tokens=12, n=3,
                                                 seed=11, stream=True))
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
             for i in range(3)]
    assert texts == [c.message.content for c in many.choices]


def test_a_resent_prompt_is_served_from_the_prefix_cache(client, tiny):
    kw = dict(model=MODEL, messages=tiny.prompt_messages, tools=synthetic.TOOLS, temperature=0, max_tokens=4)
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    # the template's system turn and tools block fill several full 16-token blocks
    assert again.usage.prompt_tokens_details.cached_tokens >= 16
    assert again.usage.prompt_tokens_details.cached_tokens <= again.usage.prompt_tokens - 1

    def said(r):  # tool-call ids are fresh per response; the rest is greedy and must repeat
        m = r.choices[0].message
        return m.content, [(c.function.name, c.function.arguments) for c in (m.tool_calls or [])]

    assert said(again) == said(first)


def test_completions_echo_logprobs_max_tokens_0_like_lm_eval(client, tiny):
    """lm-eval's local-completions: token-id prompts in a list, echo, logprobs 1, max_tokens 0 (or 1)."""
    tok = load_tokenizer(tiny.dir)
    ctx = tok("ROMEO:\nBut soft, what light", add_special_tokens=False)["input_ids"]
    cont = tok(" through yonder window", add_special_tokens=False)["input_ids"]
    r = client.completions.create(model=MODEL, prompt=[ctx + cont, ctx], echo=True, logprobs=1, max_tokens=0,
                                  temperature=0)
    assert [c.index for c in r.choices] == [0, 1] and r.choices[0].finish_reason == "length"
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(ctx + cont)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert r.choices[0].text == tok.decode(ctx + cont)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    # the continuation's log-likelihood equals a full forward of the model
    import torch

    from actors.model import load_hf

    model = load_hf(tiny.dir)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont]))[0].float(), -1)
    want = sum(float(logp[len(ctx) + i - 1, t]) for i, t in enumerate(cont))
    assert sum(lp.token_logprobs[len(ctx):]) == pytest.approx(want, abs=1e-3)
    for tops, chosen in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]):
        assert len(tops) >= 1 and max(tops.values()) >= chosen - 1e-5
    # max_tokens 1, the other form: the same prompt scores, one token more
    one = client.completions.create(model=MODEL, prompt=[ctx + cont], echo=True, logprobs=1, max_tokens=1,
                                    temperature=0)
    assert one.choices[0].logprobs.token_logprobs[:-1] == pytest.approx(lp.token_logprobs, abs=1e-5)
    as_ids = httpx.post(f"{client.base_url}completions", timeout=30, json={
        "model": MODEL, "prompt": ctx, "echo": True, "logprobs": 0, "max_tokens": 0,
        "return_tokens_as_token_ids": True}).json()
    assert as_ids["choices"][0]["logprobs"]["tokens"] == [f"token_id:{t}" for t in ctx]


def test_tool_choice_required_and_named_force_a_call(client, tiny):
    msgs = [{"role": "user", "content": "Say hello."}]
    kw = dict(model=MODEL, messages=msgs, tools=synthetic.TOOLS, temperature=0, max_tokens=24)
    auto = client.chat.completions.create(**kw).choices[0].message
    assert not auto.tool_calls and not auto.content.startswith("<tool_call>")  # left alone, no call
    # forced, the turn starts inside a call, and the call is decoded under the offered schema (guided): the tiny
    # model, trained on one calculator call, writes a valid call of a function it never saw
    pick = [{"type": "function", "function": {"name": "pick", "parameters": {"type": "object", "properties": {
        "color": {"type": "string", "enum": ["red", "green"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["color", "n"]}}}]
    kw.update(tools=pick + [{"type": "function", "function": {"name": "other", "parameters": {}}}], max_tokens=64)
    for choice in ("required", {"type": "function", "function": {"name": "pick"}}):
        msg = client.chat.completions.create(**kw, tool_choice=choice).choices[0].message
        assert msg.tool_calls, msg.content
        call = msg.tool_calls[0].function
        args = json.loads(call.arguments)
        assert call.name in ("pick", "other") and (call.name == "other" or args["color"] in ("red", "green"))
    assert call.name == "pick" and set(args) == {"color", "n"} and 0 <= args["n"] <= 9   # the named one


def test_200_concurrent_requests_with_20_malformed_get_no_5xx(base_url):
    async def main():
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            good = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 4, "temperature": 0}
            bad = [{"model": MODEL, "prompt": "x", "temperature": -1}, {"model": MODEL},
                   {"model": MODEL, "prompt": [10**9]}, {"model": MODEL, "prompt": "x", "max_tokens": 10**7},
                   {"model": MODEL, "prompt": "x", "n": 99}]
            bodies = [good] * 180 + [bad[i % len(bad)] for i in range(20)]
            random.Random(0).shuffle(bodies)
            rs = await asyncio.gather(*(http.post("/v1/completions", json=b) for b in bodies))
            return bodies, rs

    bodies, rs = asyncio.run(main())
    codes = [r.status_code for r in rs]
    assert all(c < 500 for c in codes), [r.text for r in rs if r.status_code >= 500][:3]
    assert sum(c == 200 for c in codes) == 180 and sum(c == 400 for c in codes) == 20
    assert all("error" in r.json() and r.json()["error"]["message"] for r in rs if r.status_code == 400)
