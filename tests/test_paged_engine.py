"""The continuous-batching engine: KV block manager and scheduler (no model), the paged attention kernel, the batched
sampler, and the whole engine against Hugging Face greedy `generate` on SmolLM2-135M (fp32)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from actors.model.tokenizer import stop_token_ids
from actors.engine import EngineConfig, LLMEngine, SamplingParams
from actors.engine.kv_cache import BlockManager
from actors.engine.runner import kv_bytes_per_block
from actors.engine.sampling import SampleRow, sample
from actors.engine.scheduler import Request, Scheduler
from kernels.cpu_ops import cpu_ops_available
from kernels.paged_attention import (
    HAVE_TRITON, DecodeMeta, decode_meta, paged_decode_attention_cpu,
    paged_decode_attention_reference, paged_decode_attention_triton, write_kv,
)

# ---------------------------------------------------------------------------------------------------------------
# Block manager + scheduler, no model: tokens are made up, "execution" is bookkeeping


def _run_step(sched: Scheduler, rng: random.Random, finished: list[Request]) -> None:
    out = sched.schedule()
    for req, n in out.scheduled:
        sched.computed(req, n)
        if req.num_computed == req.num_tokens:  # every token computed: it "samples" one
            req.token_ids.append(rng.randrange(50))
            if req.num_output >= req.params.max_tokens:
                sched.finish(req, "length")
                finished.append(req)


def test_no_block_leaks_after_1000_random_lifecycles():
    rng = random.Random(0)
    kv = BlockManager(num_blocks=40, block_size=4)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=24)
    system = [rng.randrange(50) for _ in range(9)]  # a shared prefix: prefix-cache hits happen
    finished: list[Request] = []
    started = 0
    while started < 1000 or sched.has_unfinished():
        if started < 1000 and rng.random() < 0.6:
            body = [rng.randrange(50) for _ in range(rng.randint(1, 30))]
            prompt = (system + body) if rng.random() < 0.5 else body
            sched.add(Request(f"r{started}", prompt, SamplingParams(max_tokens=rng.randint(1, 12))))
            started += 1
        if sched.requests and rng.random() < 0.05:  # a client goes away
            sched.abort(rng.choice(sorted(sched.requests)))
        _run_step(sched, rng, finished)
        kv.check()
        owned = sum(len(r.kv.blocks) for r in sched.running)
        assert kv.num_free_blocks + owned >= kv.usable_blocks  # shared blocks are counted once per owner
    assert kv.num_free_blocks == kv.usable_blocks
    assert all(b.ref == 0 for b in kv.blocks[1:])
    assert len(finished) > 800 and sched.num_preemptions > 0 and kv.hits > 0


def test_preemption_recomputes_and_cancellation_frees_blocks_at_once():
    kv = BlockManager(num_blocks=9, block_size=4)  # 8 usable blocks = 32 token slots
    sched = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=64)
    rng = random.Random(1)
    a = Request("a", list(range(10)), SamplingParams(max_tokens=20))
    b = Request("b", list(range(20, 30)), SamplingParams(max_tokens=20))
    sched.add(a)
    sched.add(b)
    finished: list[Request] = []
    while sched.num_preemptions == 0:
        _run_step(sched, rng, finished)
    assert b.status == "waiting" and b.num_computed == 0 and b.kv.blocks == []  # the later arrival gave way
    assert a.status == "running"
    kept = b.num_output
    assert kept > 0  # its output so far survives, to be recomputed with the prompt
    assert sched.waiting[0] is b
    free_before = kv.num_free_blocks
    held = len(a.kv.blocks)
    sched.abort("a")
    assert kv.num_free_blocks == free_before + held and "a" not in sched
    while sched.has_unfinished():
        _run_step(sched, rng, finished)
    assert b in finished and b.num_output == 20 and b.output_ids[:kept] == b.token_ids[10:10 + kept]
    assert kv.num_free_blocks == kv.usable_blocks


def test_prefix_cache_reuses_full_blocks_and_evicts_lru():
    kv = BlockManager(num_blocks=7, block_size=4)
    sched = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=64)
    rng = random.Random(2)
    prompt = list(range(100, 111))  # 11 tokens: 2 full blocks can be shared
    first = Request("first", prompt, SamplingParams(max_tokens=1))
    sched.add(first)
    _run_step(sched, rng, [])
    assert first.status == "finished"
    again = Request("again", prompt + [7, 8], SamplingParams(max_tokens=1))
    sched.add(again)
    out = sched.schedule()
    assert out.scheduled == [(again, 13 - 8)] and again.num_cached_tokens == 8
    sched.computed(again, 5)
    sched.finish(again, "length")
    # fill the cache with other content: the cached blocks are reused (evicted) once nothing else is free
    other = Request("other", list(range(200, 224)), SamplingParams(max_tokens=1))
    sched.add(other)
    sched.schedule()
    assert kv.num_free_blocks == 0 and len(kv.cached) <= 2
    kv.check()


def test_requests_sharing_a_prefix_admitted_together_compute_it_once():
    kv = BlockManager(num_blocks=20, block_size=4)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64)
    shared = list(range(100, 109))  # 2 full blocks of a common header, then each request's own tokens
    solo = Request("solo", list(range(300, 306)), SamplingParams(max_tokens=1))
    reqs = [Request(f"r{i}", shared + [i, i + 50, i + 60], SamplingParams(max_tokens=1)) for i in range(3)]
    for r in [reqs[0], solo, *reqs[1:]]:
        sched.add(r)
    out = sched.schedule()
    # r0 computes the header; r1 would compute a copy of it, so it waits one step, and the queue behind it
    assert [r.request_id for r, _ in out.scheduled] == ["r0", "solo"]
    for r, n in out.scheduled:
        sched.computed(r, n)
        sched.finish(r, "length")  # freed blocks stay in the prefix cache until reused
    out = sched.schedule()
    assert [(r.request_id, n) for r, n in out.scheduled] == [("r1", 12 - 8), ("r2", 12 - 8)]
    assert reqs[1].num_cached_tokens == reqs[2].num_cached_tokens == 8
    assert kv.hits == 16 and kv.queries == 12 + 6 + 12 + 12  # each request counted once, when admitted
    kv.check()


# ---------------------------------------------------------------------------------------------------------------
# Paged decode attention: reference vs plain attention, Triton (interpreted on CPU) vs reference


def _plain_attention(q, ks, vs, scale):
    """Per sequence: q (nh, hd) against its own K/V (S, nkv, hd), grouped-query by repetition."""
    out = []
    for b, (k, v) in enumerate(zip(ks, vs)):
        rep = q.shape[1] // k.shape[1]
        kk, vv = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (S, nh, hd)
        w = torch.softmax(torch.einsum("hd,shd->hs", q[b].float(), kk.float()) * scale, dim=-1)
        out.append(torch.einsum("hs,shd->hd", w, vv.float()))
    return torch.stack(out)


@pytest.mark.parametrize("lens, nh, nkv, hd, bs", [([1, 17, 5], 6, 2, 16, 4), ([33, 8], 9, 3, 24, 8),
                                                   ([3], 4, 4, 8, 2), ([70, 3, 16], 9, 3, 64, 16),
                                                   ([9, 2], 2, 1, 12, 4)])
def test_paged_decode_attention_matches_plain_attention(lens, nh, nkv, hd, bs):
    torch.manual_seed(0)
    num_blocks = 1 + sum(math.ceil(n / bs) for n in lens) + 3
    k_pool = torch.zeros(nkv, num_blocks * bs, hd)
    v_pool = torch.zeros_like(k_pool)
    free = list(range(1, num_blocks))
    random.Random(0).shuffle(free)  # scattered blocks: the table, not adjacency, orders a sequence
    tables, ks, vs = [], [], []
    for n in lens:
        blocks = [free.pop() for _ in range(math.ceil(n / bs))]
        slots = torch.tensor([blocks[p // bs] * bs + p % bs for p in range(n)])
        k, v = torch.randn(n, nkv, hd), torch.randn(n, nkv, hd)
        write_kv(k_pool, v_pool, k, v, slots)
        tables.append(blocks)
        ks.append(k)
        vs.append(v)
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    seq_lens = torch.tensor(lens)
    q = torch.randn(len(lens), nh, hd)
    scale = hd ** -0.5
    expected = _plain_attention(q, ks, vs, scale)
    ref = paged_decode_attention_reference(q, k_pool, v_pool, decode_meta(bt, seq_lens, bs, k_pool), scale)
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)
    if HAVE_TRITON:
        tri = paged_decode_attention_triton(q, k_pool, v_pool, DecodeMeta(bt, seq_lens, bs), scale)
        torch.testing.assert_close(tri, expected, atol=1e-5, rtol=1e-5)
    assert cpu_ops_available()  # g++ is on every machine here: the C++ operators must build
    cpp = paged_decode_attention_cpu(q, k_pool, v_pool, DecodeMeta(bt, seq_lens, bs), scale)
    torch.testing.assert_close(cpp, expected, atol=1e-5, rtol=1e-5)
    # fp16 pools: the same attention over the fp16-rounded keys and values
    cpp16 = paged_decode_attention_cpu(q, k_pool.half(), v_pool.half(), DecodeMeta(bt, seq_lens, bs), scale)
    expected16 = _plain_attention(q, [k.half().float() for k in ks], [v.half().float() for v in vs], scale)
    torch.testing.assert_close(cpp16, expected16, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Sampler


def _rows(params, n=1, prompt=(1, 2), out=(), stops=frozenset()):
    return [SampleRow(p, torch.Generator().manual_seed(i), list(prompt), list(out), stops)
            for i, p in enumerate([params] * n if isinstance(params, SamplingParams) else params)]


def test_sampler_filters_penalties_min_tokens_and_logprobs():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    greedy = logits.argmax(-1).tolist()
    assert sample(logits, _rows(SamplingParams(temperature=1.0, top_k=1), 3))[0] == greedy
    assert sample(logits, _rows(SamplingParams(temperature=2.0, min_p=1.0), 3))[0] == greedy
    assert sample(logits, _rows(SamplingParams(temperature=1.0, top_p=1e-6), 3))[0] == greedy
    # top-k 5 at a high temperature only ever draws from the 5 best
    top5 = set(logits[0].topk(5).indices.tolist())
    draws = sample(logits[:1].repeat(200, 1), _rows(SamplingParams(temperature=5.0, top_k=5), 200))[0]
    assert set(draws) <= top5 and len(set(draws)) > 1
    # a seen token is penalized out of the argmax; min_tokens masks the stop ids
    best = greedy[0]
    row = _rows(SamplingParams(temperature=0, repetition_penalty=1e3), prompt=(best,))
    big = logits[:1].clone()
    big[0, best] = abs(big[0, best]) + 1.0
    assert sample(big, row)[0][0] != best
    assert sample(big, _rows(SamplingParams(temperature=0, frequency_penalty=2.0), out=(best,) * 5))[0][0] != best
    stopped = _rows(SamplingParams(temperature=0, min_tokens=2, max_tokens=4), stops=frozenset({best}))
    assert sample(big, stopped)[0][0] != best
    # logprobs are the raw model's: log_softmax of the logits, top alternatives most likely first
    toks, lps = sample(logits, _rows(SamplingParams(temperature=0, logprobs=3), 3))
    ref = torch.log_softmax(logits, -1)
    for r, lp in enumerate(lps):
        assert lp.token_id == toks[r] and lp.rank == 1
        assert lp.logprob == pytest.approx(float(ref[r, toks[r]]), abs=1e-6)
        assert [t for t, _ in lp.top] == ref[r].topk(3).indices.tolist()


def test_seeded_rows_do_not_depend_on_the_batch():
    logits = torch.randn(4, 100)
    p = SamplingParams(temperature=1.0, seed=5)
    alone = sample(logits[2:3], [SampleRow(p, torch.Generator().manual_seed(5), [1], [], frozenset())])[0]
    rows = [SampleRow(p, torch.Generator().manual_seed(s), [1], [], frozenset()) for s in (9, 8, 5, 7)]
    assert sample(logits, rows)[0][2] == alone[0]


# ---------------------------------------------------------------------------------------------------------------
# The engine on SmolLM2-135M-Instruct against Hugging Face


@pytest.fixture(scope="module")
def smol(smollm2):
    from transformers import AutoModelForCausalLM

    from actors.model import load_hf
    from actors.model.tokenizer import load_tokenizer

    return (load_hf(smollm2, dtype=torch.float32), load_tokenizer(smollm2),
            AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32).eval())


def _mixed_prompts(tok, n: int, seed: int = 0) -> list[list[int]]:
    """Chat prompts of mixed lengths (20 to ~300 tokens) sharing the template's system turn."""
    rng = random.Random(seed)
    words = ("ocean river mountain number seven history language music planet garden reason light "
             "quickly because although however window table").split()
    prompts = []
    for _ in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.choice([3, 10, 40, 120, 200])))
        msgs = [{"role": "user", "content": f"Summarize: {text}"}]
        prompts.append(tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                           add_special_tokens=False)["input_ids"])
    return prompts


def _hf_greedy(hf, tok, ids: list[int], n: int) -> list[int]:
    """Exactly n tokens: min_new_tokens masks the end-of-turn ids, as our min_tokens does."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
                          eos_token_id=stop_token_ids(tok))
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def hf_32(smol):
    _, tok, hf = smol
    prompts = _mixed_prompts(tok, 32)
    return prompts, [_hf_greedy(hf, tok, ids, 8) for ids in prompts]


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_greedy_equals_hf_generate_alone_and_32_concurrent(smol, hf_32, prefix_caching):
    model, tok, _ = smol
    prompts, expected = hf_32
    n_new = 8
    # a small step budget: the longer prompts are prefilled in chunks next to running decodes
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory="256MiB", max_num_batched_tokens=96, max_model_len=1024,
                                                enable_prefix_caching=prefix_caching))
    params = SamplingParams(temperature=0, max_tokens=n_new, min_tokens=n_new)
    assert engine.generate(prompts[0], params).token_ids == expected[0]
    outs = engine.generate_many(prompts, params)
    assert [o.token_ids for o in outs] == expected
    stats = engine.stats()
    assert (stats["prefix_cache_hits"] > 0) == prefix_caching
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_preemption_under_a_small_cache_keeps_greedy_outputs(smol):
    model, tok, hf = smol
    prompts = _mixed_prompts(tok, 6, seed=3)
    # 6 requests of up to ~300 tokens, 24 blocks of 16 = 384 slots: they cannot all hold their KV at once
    per_block = kv_bytes_per_block(model, 16, torch.float32)
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory=25 * per_block, max_model_len=384,
                                                enable_prefix_caching=False))
    params = SamplingParams(temperature=0, max_tokens=8, min_tokens=8)
    outs = engine.generate_many(prompts, params)
    assert engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == [_hf_greedy(hf, tok, ids, 8) for ids in prompts]


def test_prompt_logprobs_equal_a_full_forward(smol):
    model, tok, hf = smol
    ids = _mixed_prompts(tok, 1, seed=5)[0]
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory="128MiB", max_num_batched_tokens=32, max_model_len=1024))
    out = engine.generate(ids, SamplingParams(temperature=0, max_tokens=0, prompt_logprobs=2))
    assert out.finish_reason == "length" and out.token_ids == []
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)  # (T, V)
    got = out.prompt_logprobs
    assert got[0] is None and len(got) == len(ids)
    for p in range(1, len(ids)):
        assert got[p].token_id == ids[p]
        assert got[p].logprob == pytest.approx(float(ref[p - 1, ids[p]]), abs=1e-4)
        assert [t for t, _ in got[p].top] == ref[p - 1].topk(2).indices.tolist()


def test_kv_cache_memory_too_small_names_the_setting(smol):
    model, tok, _ = smol
    with pytest.raises(ValueError, match="kv_cache_memory.*max_model_len"):
        LLMEngine(model, tok, EngineConfig(kv_cache_memory="1MiB"))


def test_engine_factory_and_memory_settings_name_the_fix(smol):
    from actors.common.config import ConfigError
    from actors.engine import ENGINES, make_engine, parse_memory

    assert parse_memory("2GiB") == (2 * 2**30, None) and parse_memory("512MiB") == (512 * 2**20, None)
    assert parse_memory(0.25) == (None, 0.25) and parse_memory("0.3") == (None, 0.3)
    assert parse_memory(1 << 20) == (1 << 20, None)
    with pytest.raises(ConfigError, match="engine.kv_cache_memory: 'lots' is not a size"):
        EngineConfig(kv_cache_memory="lots")
    with pytest.raises(ConfigError, match="engine.block_size"):
        EngineConfig(block_size=12)
    with pytest.raises(ConfigError, match="engine.name: 'fast'.*paged"):
        EngineConfig(name="fast")
    cfg = EngineConfig(kv_cache_memory="0.25")  # parsed once, when the config is made
    assert cfg.kv_cache_bytes(torch.device("cpu")) > 0
    assert EngineConfig(kv_cache_memory="3MiB").kv_cache_bytes(torch.device("cpu")) == 3 * 2**20
    model, tok, _ = smol
    with pytest.raises(ValueError, match="cannot be imported"):
        make_engine(model, tok, EngineConfig(name="no.such.module:Engine"))
    eng = make_engine(model, tok, EngineConfig(name="actors.engine.engine:LLMEngine", kv_cache_memory="64MiB",
                                               max_model_len=256))
    assert isinstance(eng, ENGINES["paged"]) and eng.max_model_len == 256


def test_streaming_detokenization_holds_back_split_utf8(smol):
    """Byte-level BPE splits a Chinese character over tokens: the stream never shows U+FFFD and joins to the text."""
    from actors.engine import IncrementalDetokenizer

    _, tok, _ = smol
    text = "你好，世界！今天的天气很好。33 + 2874 的结果是多少？"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # the premise: some tokens are partial characters
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas) and "".join(deltas) == text
