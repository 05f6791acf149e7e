"""The serving engine (LLMEngine) against a tiny real model: HF generate parity, seeded sampling, stop rules, abort,
asyncio driver, and the runner leaving the caller's model untouched.

`make_tiny_model` (tests/helpers.py, also used by test_serve.py) trains a small tokenizer and overfits a 2-layer
model on one synthetic tool-call conversation, so greedy decoding of that prompt really emits a `<tool_call>` turn.
"""
from __future__ import annotations

import asyncio

import pytest
import torch

from actors.common.config import ConfigError
from actors.data import synthetic
from actors.engine import AsyncEngine, EngineConfig, LLMEngine, SamplingParams
from actors.model import load_hf
from actors.model.tokenizer import load_tokenizer, stop_token_ids
from actors.tooltask import parse_tool_calls
from tests.helpers import TinyModel, causal_lm_loss, make_tiny_model


def prompt_ids(tok, messages, tools=synthetic.TOOLS) -> list[int]:
    text = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyModel:
    return make_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_hf(tiny.dir), load_tokenizer(tiny.dir)


SMALL_KV = "64MiB"  # the tiny model's whole context fits many times


@pytest.fixture
def engine(loaded) -> LLMEngine:
    model, tok = loaded
    return LLMEngine(model, tok, EngineConfig(kv_cache_memory=SMALL_KV))


def greedy(tok, max_tokens=64, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, stop_token_ids=stop_token_ids(tok), **kw)


def test_overfit_model_emits_the_tool_call(engine, tiny):
    """The fixture's premise: greedy decoding of the conversation's prompt is its tool-call turn."""
    tok = engine.tokenizer
    out = engine.generate(prompt_ids(tok, tiny.prompt_messages), greedy(tok))
    assert out.finished and out.finish_reason == "stop"
    assert out.token_ids[-1] in stop_token_ids(tok)
    content, calls, errors = parse_tool_calls(out.text)
    assert errors == [] and content == ""
    assert calls == [{"name": "calculator", "arguments": {"expression": tiny.record["expression"]}}]


def test_greedy_matches_transformers_generate(engine, tiny):
    from transformers import AutoModelForCausalLM

    tok = engine.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(str(tiny.dir)).eval()
    prompts = [
        prompt_ids(tok, tiny.prompt_messages),
        prompt_ids(tok, [{"role": "user", "content": "What is 12 + 30?"}]),
        tok("ROMEO:\nBut soft, what light", add_special_tokens=False)["input_ids"],
    ]
    stops = stop_token_ids(tok)
    for ids in prompts:
        ours = engine.generate(ids, greedy(tok, max_tokens=24))
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              do_sample=False, max_new_tokens=24, eos_token_id=stops,
                              pad_token_id=tok.pad_token_id)
        assert ours.token_ids == ref[0, len(ids):].tolist()
        assert ours.prompt_tokens == len(ids) and ours.completion_tokens == len(ours.token_ids)


def test_seeded_sampling_is_reproducible_and_per_request(engine):
    tok = engine.tokenizer
    ids = tok("KING HENRY:\nNow", add_special_tokens=False)["input_ids"]

    def params(seed):
        return SamplingParams(temperature=1.5, top_p=0.95, max_tokens=20, seed=seed)

    a = engine.generate(ids, params(1234)).token_ids
    b = engine.generate(ids, params(1234)).token_ids
    assert a == b
    others = [engine.generate(ids, params(s)).token_ids for s in (1, 2, 3)]
    assert any(o != a for o in others), "different seeds should give different samples"
    # two requests in flight together keep their own generators
    engine.add_request("x", ids, params(1234))
    engine.add_request("y", ids, params(1234))
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.token_ids
    assert done["x"] == done["y"] == a


def test_top_p_tiny_keeps_only_the_argmax(engine):
    tok = engine.tokenizer
    ids = tok("First Citizen:\n", add_special_tokens=False)["input_ids"]
    g = engine.generate(ids, SamplingParams(temperature=0, max_tokens=12)).token_ids
    s = engine.generate(ids, SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=12, seed=7)).token_ids
    assert s == g


def test_stop_string_cuts_output_and_never_streams_it(engine, tiny):
    tok = engine.tokenizer
    ids = prompt_ids(tok, tiny.prompt_messages)
    full = engine.generate(ids, greedy(tok)).text
    stop = '"arguments"'
    assert stop in full
    engine.add_request("s", ids, greedy(tok, stop=["never-appears", stop]))
    deltas, last = [], None
    while engine.has_unfinished():
        for out in engine.step():
            deltas.append(out.delta_text)
            last = out
    assert last.finished and last.finish_reason == "stop"
    assert last.text == full[:full.index(stop)]
    assert "".join(deltas) == last.text


def test_max_tokens_and_context_length_give_length(engine, loaded, tiny):
    tok = engine.tokenizer
    ids = prompt_ids(tok, tiny.prompt_messages)
    out = engine.generate(ids, greedy(tok, max_tokens=5))
    assert out.finish_reason == "length" and out.completion_tokens == 5 and len(out.token_ids) == 5
    small = LLMEngine(loaded[0], tok, EngineConfig(kv_cache_memory=SMALL_KV, max_model_len=len(ids) + 3))
    out = small.generate(ids, greedy(tok, max_tokens=50))
    assert out.finish_reason == "length" and out.completion_tokens == 3
    with pytest.raises(ValueError, match="context length"):
        small.add_request("too-long", ids + ids[:3], greedy(tok))


def test_abort_drops_the_request(engine):
    tok = engine.tokenizer
    ids = tok("To be, or not", add_special_tokens=False)["input_ids"]
    engine.add_request("keep", ids, greedy(tok, max_tokens=6))
    engine.add_request("drop", ids, greedy(tok, max_tokens=6))
    assert {o.request_id for o in engine.step()} == {"keep", "drop"}
    assert engine.abort("drop") is True
    assert engine.abort("drop") is False and engine.abort("unknown") is False
    seen = set()
    while engine.has_unfinished():
        seen |= {o.request_id for o in engine.step()}
    assert seen == {"keep"}


def test_sampling_params_validation_names_the_field():
    for kwargs, field in [({"temperature": -0.1}, "temperature"), ({"top_p": 0}, "top_p"),
                          ({"top_p": 1.5}, "top_p"), ({"max_tokens": -1}, "max_tokens"),
                          ({"top_k": 2.5}, "top_k"), ({"min_p": 2}, "min_p"), ({"repetition_penalty": 0}, "repetition_penalty"),
                          ({"presence_penalty": 3}, "presence_penalty"), ({"logprobs": 21}, "logprobs"),
                          ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
                          ({"stop": [""]}, "stop"), ({"seed": 1.5}, "seed")]:
        with pytest.raises(ConfigError, match=field):
            SamplingParams(**kwargs)
    assert SamplingParams(stop="END").stop == ["END"]


def test_async_engine_serves_concurrent_requests(engine):
    tok = engine.tokenizer
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ("ROMEO:", "JULIET:\nO", "First Citizen:")]
    expected = [engine.generate(ids, greedy(tok, max_tokens=10)).text for ids in prompts]
    aengine = AsyncEngine(engine)

    async def one(ids):
        text = ""
        async for out in aengine.generate(ids, greedy(tok, max_tokens=10)):
            text += out.delta_text
        return text

    async def abandoned(ids):  # a consumer that stops early aborts its request
        async for _ in aengine.generate(ids, greedy(tok, max_tokens=50)):
            break

    async def main():
        got = await asyncio.gather(*(one(ids) for ids in prompts), abandoned(prompts[0]))
        for _ in range(100):  # the abort is applied by the engine loop between steps
            if not engine.has_unfinished():
                break
            await asyncio.sleep(0.01)
        return got[:3]

    assert asyncio.run(main()) == expected
    assert not engine.has_unfinished()
    assert engine.kv.num_free_blocks == engine.kv.usable_blocks  # the abandoned request's blocks came back


def test_engine_leaves_the_callers_model_untouched_and_trainable(tiny):
    """The runner fuses q/k/v and gate/up into tensors of its own: the model it was given keeps its parameter
    objects, names, requires_grad, values and mode, and still trains."""
    model, tok = load_hf(tiny.dir), load_tokenizer(tiny.dir)
    model.train()
    params = dict(model.named_parameters())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in params.items()}
    ids = prompt_ids(tok, tiny.prompt_messages)
    engines = [LLMEngine(model, tok, EngineConfig(kv_cache_memory=SMALL_KV)) for _ in range(2)]  # two share it
    outs = [e.generate(ids, greedy(tok, max_tokens=16)) for e in engines]
    assert outs[0].completion_tokens > 0 and outs[0].token_ids == outs[1].token_ids
    assert model.training
    assert dict(model.named_parameters()) == params  # the same Parameter objects under the same names
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads and all(grads.values())
    assert all(layer.self_attn.qkv is None and layer.mlp.gate_up is None
               for layer in model.model.layers.values())
    # the engine's fused copies are its own tensors; every other tensor is shared, not copied
    twin = engines[0].runner.model
    assert twin is not model and not twin.training
    fused = twin.model.layers["0"].self_attn.qkv.weight
    assert fused is not None and fused.data_ptr() != params["model.layers.0.self_attn.q_proj.weight"].data_ptr()
    assert twin.model.embed_tokens.weight is params["model.embed_tokens.weight"]
    # and it still trains: a gradient for every parameter, and a step moves the weights
    x = torch.tensor([ids])
    causal_lm_loss(model(x), x).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(params["model.layers.0.self_attn.q_proj.weight"],
                           state["model.layers.0.self_attn.q_proj.weight"])


PICK = [{"type": "function", "function": {"name": "pick", "parameters": {"type": "object", "properties": {
    "color": {"type": "string", "enum": ["red", "green"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["color", "n"]}}}]


def test_guided_call_follows_the_offered_schema(engine, tiny):
    """Inside a call (the prompt ends with <tool_call>, as tool_choice=required makes it), the overfit model
    writes its calculator call unguided; guided by the offered functions' grammar it must write `pick` with a
    colour from the enum and an integer in range, then the close tag."""
    from actors.engine import GrammarSpec
    from actors.tooltask import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, call_grammar

    tok = engine.tokenizer
    ids = prompt_ids(tok, tiny.prompt_messages) + tok(TOOL_CALL_OPEN, add_special_tokens=False)["input_ids"]
    free = engine.generate(ids, greedy(tok, 96))
    assert parse_tool_calls(TOOL_CALL_OPEN + free.text)[1][0]["name"] == "calculator"
    guided = engine.generate(ids, greedy(tok, 96, guide=GrammarSpec(call_grammar(PICK), TOOL_CALL_OPEN, primed="")))
    # the guided call, up to its close tag (after it the text is free again: the tiny model may ramble on)
    first = guided.text.split(TOOL_CALL_CLOSE, 1)[0] + TOOL_CALL_CLOSE
    _, calls, errors = parse_tool_calls(TOOL_CALL_OPEN + first)
    assert errors == [] and [c["name"] for c in calls][:1] == ["pick"]
    args = calls[0]["arguments"]
    assert set(args) == {"color", "n"} and args["color"] in ("red", "green") and isinstance(args["n"], int)
    assert 0 <= args["n"] <= 9


def test_lazy_guide_masks_only_inside_each_call(loaded):
    """Free text until the trigger; inside a call only the grammar's tokens (an unknown argument name is
    masked); free again after the close tag, and guided again at the next call."""
    from actors.engine.guide import GrammarSpec, GuideFactory
    from actors.tooltask import TOOL_CALL_OPEN, call_grammar

    _, tok = loaded
    guide = GuideFactory(tok, len(tok)).start(GrammarSpec(call_grammar(PICK + synthetic.TOOLS), TOOL_CALL_OPEN))
    text = ('Sure. <tool_call>{"name": "pick", "arguments": {"color": "red", "n": 4}}</tool_call>\n'
            '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 3"}}</tool_call> Done.')
    out, guided = "", []
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        allowed = guide.allowed()
        guided.append(allowed is not None)
        assert allowed is None or bool(allowed[t]), out   # every token of valid calls is allowed
        out += tok.decode([t])
        guide.advance(t, out)
    assert not guided[0] and not guided[-1] and guided.count(True) > 10
    # a call's span is guided: the flags switch on twice (two calls) and off twice
    assert sum(1 for a, b in zip(guided, guided[1:]) if not a and b) == 2
    bad = GuideFactory(tok, len(tok)).start(GrammarSpec(call_grammar(PICK), TOOL_CALL_OPEN, primed=""))
    out = ""
    for t in tok('{"name": "pick", "arguments": {"', add_special_tokens=False)["input_ids"]:
        out += tok.decode([t])
        bad.advance(t, out)
    allowed = bad.allowed()   # the arguments' first key, in the schema's order: only "color" may start here
    assert {tok.decode([i]) for i in allowed.nonzero()[:, 0].tolist()} <= {"c", "co", "col", "colo", "color"}
    assert not allowed[tok("expression", add_special_tokens=False)["input_ids"][0]]


def test_many_adapters_in_one_batch_equal_each_merged_model(loaded, tiny, tmp_path):
    """Requests for three adapters (LoRA on every projection, LoRA on two, DoRA) and the base run together in one
    engine; each equals the engine over that adapter merged into the base: greedy tokens and first-step logprobs.
    No KV block is shared across adapters; with max_loras=2 the third adapter waits for a free slot."""
    from actors.engine import AdapterRef
    from actors.model.lora import merge_lora_
    from tests.helpers import make_adapter

    model, tok = loaded
    adapters = [AdapterRef("all", str(make_adapter(tiny.dir, tmp_path / "all", seed=1))),
                AdapterRef("two", str(make_adapter(tiny.dir, tmp_path / "two", seed=2, r=4,
                                                   targets=["q_proj", "down_proj"]))),
                AdapterRef("dora", str(make_adapter(tiny.dir, tmp_path / "dora", seed=3, dora=True)))]
    prompts = [prompt_ids(tok, tiny.prompt_messages), tok("To be or not to be")["input_ids"],
               tok("Once upon a time there was")["input_ids"]]

    def params(adapter=None):
        return greedy(tok, max_tokens=12, logprobs=3, ignore_eos=True, adapter=adapter)

    engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory=SMALL_KV, max_loras=2))
    jobs = [(p, a) for p in prompts for a in [None, *adapters]]
    outs = engine.generate_many([p for p, _ in jobs], [params(a) for _, a in jobs])
    assert engine.loras.loads >= 3 and len(engine.loras.loaded) <= 2 and engine.has_unfinished() is False
    assert all(a.refs == 0 for a in engine.loras.loaded.values())
    for adapter in [None, *adapters]:
        reference = load_hf(tiny.dir)
        if adapter is not None:
            merge_lora_(reference, adapter.path)
        ref_engine = LLMEngine(reference, tok, EngineConfig(kv_cache_memory=SMALL_KV))
        for (p, a), out in zip(jobs, outs):
            if a is not adapter:
                continue
            want = ref_engine.generate(p, params())
            assert out.token_ids == want.token_ids, adapter
            first, ref_first = out.logprobs[0], want.logprobs[0]
            assert [t for t, _ in first.top] == [t for t, _ in ref_first.top]
            assert max(abs(x - y) for (_, x), (_, y) in zip(first.top, ref_first.top)) < 1e-4
    base = {i: o.token_ids for i, ((p, a), o) in enumerate(zip(jobs, outs)) if a is None}
    assert any(o.token_ids != base[i - i % 4] for i, ((p, a), o) in enumerate(zip(jobs, outs)) if a is not None)
    # the prefix cache is keyed by adapter: a prompt cached under the base is a miss for an adapter, a hit again
    # for the base and, the second time, for the adapter
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory=SMALL_KV))
    long = prompts[0]
    assert engine.generate(long, params()).cached_tokens == 0
    assert engine.generate(long, params(adapters[0])).cached_tokens == 0
    assert engine.generate(long, params()).cached_tokens > 0
    assert engine.generate(long, params(adapters[0])).cached_tokens > 0
    assert engine.generate(long, params(adapters[1])).cached_tokens == 0


@pytest.mark.parametrize("quantization", ["int8", "int8:int_mm", "int8:dynamic", "int8:weight_only"])
def test_int8_engine_greedy_agreement_with_fp32_is_reported(loaded, tiny, quantization, record_property):
    """Every projection (the vocabulary head too) on per-channel int8 weights: greedy tokens agree with the fp32
    engine's (the share is recorded in the test report), and adapters still apply over the int8 base."""
    model, tok = loaded
    prompts = [prompt_ids(tok, tiny.prompt_messages), tok("To be or not to be")["input_ids"],
               tok("Once upon a time there was")["input_ids"], tok("My lord, the king")["input_ids"]]
    p = greedy(tok, max_tokens=24, ignore_eos=True)
    fp32 = LLMEngine(model, tok, EngineConfig(kv_cache_memory=SMALL_KV)).generate_many(prompts, p)
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory=SMALL_KV, quantization=quantization))
    assert all(m.int8 is not None for m in engine.runner.model.modules() if type(m).__name__ == "Proj")
    int8 = engine.generate_many(prompts, p)
    same = sum(a == b for x, y in zip(int8, fp32) for a, b in zip(x.token_ids, y.token_ids))
    share = same / sum(len(y.token_ids) for y in fp32)
    record_property("int8_greedy_agreement", share)
    print(f"{quantization}: greedy agreement with fp32 {share:.3f}")
    # a 2-layer model overfit on one record: one early flip changes the rest of that output, so the share is a
    # report (SmolLM2's perplexity cost is bench.serve's figure); each output's first token must hold
    assert all(x.token_ids[0] == y.token_ids[0] for x, y in zip(int8, fp32))
    assert share >= 0.5
