"""Serving benchmark in the manner of `vllm bench serve`: our OpenAI endpoint on Ray Serve under load, against Hugging
Face `generate` on the same requests in the same run.

    .venv/bin/python -m bench.serve --baseline hf --dtype bfloat16      # the issue's workload (defaults)
    .venv/bin/python -m bench.serve --request-rate 4 --num-prompts 100  # Poisson arrivals instead of a burst

Requests: random token-id prompts with lengths uniform in [input-len-min, input-len-max], outputs uniform in
[output-len-min, output-len-max] with `ignore_eos` (and `min_tokens` = the length, so every request produces exactly
its length), greedy, streamed over HTTP from one engine replica; at most `--max-concurrency` in flight, sent at once
or at `--request-rate` per second (Poisson). Reported: request/s, output tok/s, TTFT, TPOT, ITL and E2E (mean, p50,
p99). `--baseline hf` then runs the same requests through `transformers` as one left-padded static batch to the
longest output (each request counted only up to its own length), at the same dtype and torch threads, and compares
the first `--greedy-check` requests token by token with HF greedy on each request alone.

The full report goes to --out (JSON); the last line printed is the summary JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

from cluster.hardware import cpu_bf16_native, precision_info, resolve_dtype


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name, .gguf or HF folder")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="auto (default): bfloat16 where the hardware computes it natively, else float32")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both ours and HF")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--max-concurrency", type=int, default=64)
    ap.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (Poisson); inf = burst")
    ap.add_argument("--input-len-min", type=int, default=32)
    ap.add_argument("--input-len-max", type=int, default=512)
    ap.add_argument("--output-len-min", type=int, default=16)
    ap.add_argument("--output-len-max", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", choices=["hf", "llamacpp", "none"], default="none",
                    help="hf: transformers generate as one static batch; llamacpp: llama.cpp's server (xllamacpp, "
                         "its own venv) on the same requests, F32 vs our fp32 and Q8_0 vs our int8 (and BF16 vs our bf16 "
                         "on a CPU with native bf16)")
    ap.add_argument("--ppl-tokens", type=int, default=16384, help="held-out tokens for the int8 perplexity delta")
    ap.add_argument("--greedy-check", type=int, default=16, help="requests compared with HF greedy, one by one")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--kv-cache-memory", default="3GiB")
    ap.add_argument("--out", default=None, help="JSON report (default runs/bench/serve-<dtype>.json)")
    a = ap.parse_args(argv)
    a.dtype = resolve_dtype(a.dtype, field="--dtype")
    return a


def make_requests(a, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(a.seed)
    # ids above the special/byte tokens: any such sequence is a valid prompt
    return [([rng.randrange(1000, vocab) for _ in range(rng.randint(a.input_len_min, a.input_len_max))],
             rng.randint(a.output_len_min, a.output_len_max)) for _ in range(a.num_prompts)]


def stats_ms(xs: list[float]) -> dict:
    if not xs:
        return {"mean": None, "p50": None, "p99": None}
    s = sorted(xs)
    pct = lambda q: s[min(len(s) - 1, int(round(q * (len(s) - 1))))]  # noqa: E731
    return {"mean": 1e3 * statistics.fmean(s), "p50": 1e3 * pct(0.5), "p99": 1e3 * pct(0.99)}


async def _one(http, model: str, prompt: list[int], n_out: int, want_ids: bool) -> dict:
    """One streamed request. Token ids come back (as logprobs entries) only where `want_ids`: the greedy check
    needs them, the others count tokens by usage, as `vllm bench serve` does."""
    body = {"model": model, "prompt": prompt, "max_tokens": n_out, "min_tokens": n_out, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if want_ids:
        body.update(logprobs=0, return_tokens_as_token_ids=True)
    t0 = time.perf_counter()
    times, tokens, n_tokens = [], [], 0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode()[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                n_tokens = chunk["usage"]["completion_tokens"]
            if not chunk["choices"]:
                continue
            choice = chunk["choices"][0]
            if choice["text"] or (choice["logprobs"] and choice["logprobs"]["tokens"]):
                times.append(time.perf_counter())
            if choice["logprobs"]:
                tokens.extend(int(t.split(":", 1)[1]) for t in choice["logprobs"]["tokens"])
    e2e = time.perf_counter() - t0
    ttft = times[0] - t0
    return {"ttft": ttft, "e2e": e2e, "itl": [b - a for a, b in zip(times, times[1:])], "tokens": tokens,
            "n_tokens": n_tokens, "tpot": (e2e - ttft) / (n_tokens - 1) if n_tokens > 1 else None}


async def run_load(base_url: str, model: str, requests, a) -> tuple[list[dict], float]:
    import httpx

    sem = asyncio.Semaphore(a.max_concurrency)
    rng = random.Random(a.seed + 1)
    limits = httpx.Limits(max_connections=a.max_concurrency + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, limits=limits) as http:
        async def limited(p, n, want_ids):
            async with sem:
                return await _one(http, model, p, n, want_ids)

        t0 = time.perf_counter()
        tasks = []
        for i, (p, n) in enumerate(requests):
            tasks.append(asyncio.ensure_future(limited(p, n, i < a.greedy_check)))
            if a.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(a.request_rate))
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - t0


def hf_baseline(model_dir: str, requests, a) -> tuple[float, list[list[int]]]:
    """One left-padded static batch to the longest output; then HF greedy on the first requests alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from actors.model.tokenizer import load_tokenizer, stop_token_ids

    torch.set_num_threads(a.threads)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, a.dtype)).eval()
    stops = stop_token_ids(load_tokenizer(model_dir))
    L, longest = max(len(p) for p, _ in requests), max(n for _, n in requests)
    ids = torch.tensor([[0] * (L - len(p)) + p for p, _ in requests])  # (B, L) left-padded
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p, _ in requests])
    with torch.inference_mode():
        t0 = time.perf_counter()
        hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=longest,
                    min_new_tokens=longest, pad_token_id=0, eos_token_id=stops)
        hf_s = time.perf_counter() - t0
        alone = []
        for p, n in requests[:a.greedy_check]:
            out = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0, eos_token_id=stops)
            alone.append(out[0, len(p):].tolist())
    return hf_s, alone


def serve_run(model_dir: str, requests, a, dtype: str, quantization: str = "none"):
    """Our replica on Ray Serve over the request list: (results, seconds, the engine's stats)."""
    from actors.engine import EngineConfig
    from actors.serve.config import ServeConfig
    from actors.serve.deployment import start_server, stop_server

    app = "bench-serve"
    cfg = ServeConfig(model=model_dir, model_name="bench", port=_free_port(), dtype=dtype, torch_threads=a.threads,
                      num_cpus=a.threads, max_ongoing_requests=max(a.max_concurrency, 64),
                      engine=EngineConfig(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
                                          kv_cache_memory=a.kv_cache_memory, quantization=quantization))
    url = start_server(cfg, app_name=app, timeout_s=600)
    try:
        asyncio.run(run_load(url, "bench", [(requests[0][0][:16], 4)], a))  # warm-up
        results, dur = asyncio.run(run_load(url, "bench", requests, a))
        from ray import serve

        engine_stats = serve.get_deployment_handle("LLMServer", app_name=app).stats.remote().result()
    finally:
        stop_server(app)
    engine_stats.pop("metrics", None)
    return results, dur, engine_stats


def setup(a) -> tuple[str, list[tuple[list[int], int]]]:
    """Ray connected; (the model's HF folder, the request list)."""
    import cluster
    from actors.model.registry import resolve_model

    cluster.connect()
    model_dir = str(resolve_model(a.model, cluster.model_cache()))
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    return model_dir, make_requests(a, vocab)


def main(argv=None) -> dict:
    a = parse(argv)
    model_dir, requests = setup(a)
    if a.baseline == "llamacpp":
        return llamacpp_main(a, model_dir, requests)
    results, dur, engine_stats = serve_run(model_dir, requests, a, a.dtype)
    out_tokens = sum(r["n_tokens"] for r in results)
    assert out_tokens == sum(n for _, n in requests), "a request produced a different number of tokens"
    report = {
        "model": a.model, **precision_info(a.dtype), "threads": a.threads, "num_prompts": a.num_prompts,
        "max_concurrency": a.max_concurrency, "request_rate": str(a.request_rate),
        "input_len": [a.input_len_min, a.input_len_max], "output_len": [a.output_len_min, a.output_len_max],
        "duration_s": dur, "request_throughput": len(results) / dur, "output_throughput": out_tokens / dur,
        "total_input_tokens": sum(len(p) for p, _ in requests), "total_output_tokens": out_tokens,
        "ttft_ms": stats_ms([r["ttft"] for r in results]),
        "tpot_ms": stats_ms([r["tpot"] for r in results if r["tpot"] is not None]),
        "itl_ms": stats_ms([x for r in results for x in r["itl"]]),
        "e2e_ms": stats_ms([r["e2e"] for r in results]),
        "engine": engine_stats,   # cumulative over the warm-up and the run
    }
    summary = {"ours_out_tok_s": round(report["output_throughput"], 2), "hf_out_tok_s": None, "ratio": None,
               "ttft_p50_ms": round(report["ttft_ms"]["p50"], 1), "tpot_p50_ms": round(report["tpot_ms"]["p50"], 1),
               **precision_info(a.dtype), "threads": a.threads, "greedy_equal": None}
    print(f"ours: {len(results)} requests in {dur:.1f}s, {report['output_throughput']:.1f} output tok/s, "
          f"TTFT p50 {report['ttft_ms']['p50']:.0f} ms, TPOT p50 {report['tpot_ms']['p50']:.1f} ms; engine "
          f"{engine_stats.get('steps')} steps in {engine_stats.get('step_seconds')}s", flush=True)
    if a.baseline == "hf":
        hf_s, alone = hf_baseline(model_dir, requests, a)
        hf_tok_s = out_tokens / hf_s
        ours = [r["tokens"] for r in results[:a.greedy_check]]
        same = sum(x == y for o, h in zip(ours, alone) for x, y in zip(o, h))
        total = sum(len(h) for h in alone)
        report["hf"] = {"duration_s": hf_s, "output_throughput": hf_tok_s,
                        "greedy_requests_equal": sum(o == h for o, h in zip(ours, alone)),
                        "greedy_token_share": same / total}
        summary.update(hf_out_tok_s=round(hf_tok_s, 2), ratio=round(report["output_throughput"] / hf_tok_s, 3),
                       greedy_equal=all(o == h for o, h in zip(ours, alone)),
                       greedy_token_share=round(same / total, 4))
        print(f"hf generate (static batch): {hf_s:.1f}s, {hf_tok_s:.1f} output tok/s; greedy equal "
              f"{report['hf']['greedy_requests_equal']}/{len(alone)} requests, {same}/{total} tokens", flush=True)
    out = Path(a.out or f"runs/bench/serve-{a.dtype}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "report": report}, indent=2))
    print(json.dumps(summary))
    return summary


def peak_gemm_gflops(threads: int, dtype: str = "float32") -> float:
    """The best fp32 GEMM rate torch reaches here on `threads` threads over the model's projection shapes at
    2048 rows (the prefill-sized matmul; decode batches only reach less)."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for k, n in ((576, 1536), (1536, 576), (576, 960), (576, 4608)):
        x = torch.randn(2048, k, dtype=getattr(torch, dtype))
        w = torch.randn(n, k, dtype=getattr(torch, dtype))
        for _ in range(2):
            x @ w.t()
        t0, reps = time.perf_counter(), 8
        for _ in range(reps):
            x @ w.t()
        best = max(best, 2 * 2048 * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return best


def linear_flops(model_dir: str, requests) -> float:
    """Multiply-adds x 2 of every projection over every prompt and output token, plus the vocabulary projection
    of each sampled token (the engine computes logits only where it samples)."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = c.get("head_dim") or h // c["num_attention_heads"]
    per_token = layers * (h * hd * (c["num_attention_heads"] * 2 + c["num_key_value_heads"] * 2) + 3 * h * inter)
    tokens = sum(len(p) + n for p, n in requests)
    sampled = sum(n for _, n in requests)
    return 2.0 * (per_token * tokens + h * c["vocab_size"] * sampled)


def perplexity(model_dir: str, quantization: str, n_tokens: int, threads: int) -> float:
    """Perplexity through the serving engine (prompt logprobs, the served path) on held-out Wikipedia text:
    the last `n_tokens` tokens of pretrain_demo_llamafactory/wiki_demo.txt in 1024-token windows."""
    import math

    import torch

    import cluster
    from actors.engine import EngineConfig, LLMEngine, SamplingParams
    from actors.model import load_hf
    from actors.model.tokenizer import load_tokenizer

    torch.set_num_threads(threads)
    tok = load_tokenizer(model_dir)
    text = (Path(cluster.data_root()) / "pretrain_demo_llamafactory" / "wiki_demo.txt").read_text()
    ids = tok(text[-n_tokens * 8:], add_special_tokens=False)["input_ids"][-n_tokens:]
    engine = LLMEngine(load_hf(model_dir, dtype=torch.float32), tok,
                       EngineConfig(kv_cache_memory="1GiB", quantization=quantization, enable_prefix_caching=False))
    windows = [ids[i:i + 1024] for i in range(0, len(ids), 1024)]
    outs = engine.generate_many(windows, SamplingParams(max_tokens=0, prompt_logprobs=0))
    lps = [lp.logprob for o in outs for lp in o.prompt_logprobs if lp is not None]
    return math.exp(-sum(lps) / len(lps))


def hf_greedy_alone(model_dir: str, requests, threads: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return [hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                            do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
                            eos_token_id=None)[0, len(p):].tolist() for p, n in requests]


def llamacpp_main(a, model_dir: str, requests) -> dict:
    """Ours (fp32, then int8) and llama.cpp's server (F32, then Q8_0) on the same requests, one after another in
    this run; the int8 perplexity delta; our fp32 greedy against HF greedy; the fp32 run against the GEMM floor."""
    from actors.model.registry import REGISTRY, registry_gguf
    from bench.llamacpp import LlamaServer, convert_gguf, ensure_venv

    root = Path("runs/bench")
    root.mkdir(parents=True, exist_ok=True)
    if a.model not in REGISTRY:
        raise SystemExit("--baseline llamacpp needs a registry model (its GGUF is converted for llama.cpp)")
    _, gguf_path = registry_gguf(a.model)
    out_tokens = sum(n for _, n in requests)
    report: dict = {"model": a.model, **precision_info("float32"), "threads": a.threads,
                    "num_prompts": a.num_prompts, "max_concurrency": a.max_concurrency,
                    "input_len": [a.input_len_min, a.input_len_max], "output_len": [a.output_len_min, a.output_len_max],
                    "total_input_tokens": sum(len(p) for p, _ in requests), "total_output_tokens": out_tokens}

    def record(name, results, dur, extra=None):
        assert sum(r["n_tokens"] for r in results) == out_tokens, f"{name}: a request produced another length"
        report[name] = {"duration_s": dur, "output_throughput": out_tokens / dur,
                        "ttft_ms": stats_ms([r["ttft"] for r in results]),
                        "tpot_ms": stats_ms([r["tpot"] for r in results if r["tpot"] is not None]), **(extra or {})}
        print(f"{name}: {dur:.1f} s, {out_tokens / dur:.1f} output tok/s", flush=True)

    res32, dur32, st32 = serve_run(model_dir, requests, a, "float32")
    record("ours_fp32", res32, dur32, {"engine": st32})
    res8, dur8, st8 = serve_run(model_dir, requests, a, "float32", "int8")
    record("ours_int8", res8, dur8, {"engine": st8})
    legs = [("llamacpp_f32", "F32"), ("llamacpp_q8", "Q8_0")]
    if cpu_bf16_native():   # bf16 is only worth serving where the CPU computes it natively (AVX512_BF16/AMX)
        res16, dur16, st16 = serve_run(model_dir, requests, a, "bfloat16")
        record("ours_bf16", res16, dur16, {"engine": st16})
        legs.append(("llamacpp_bf16", "BF16"))
    py = ensure_venv(root)
    ctx = max(len(p) + n for p, n in requests) + 64
    plain = argparse.Namespace(**{**vars(a), "greedy_check": 0})
    for name, qtype in legs:
        gg = convert_gguf(gguf_path, root / f"{a.model}-{qtype}.gguf", qtype)
        with LlamaServer(py, gg, _free_port(), a.threads, a.max_concurrency, ctx) as srv:
            asyncio.run(run_load(srv.url, "llamacpp", [(requests[0][0][:16], 4)], plain))  # warm-up
            results, dur = asyncio.run(run_load(srv.url, "llamacpp", requests, plain))
        record(name, results, dur, {"gguf": str(gg)})
    n_check = min(a.greedy_check, len(requests))
    hf = hf_greedy_alone(model_dir, requests[:n_check], a.threads)
    ours32 = [r["tokens"] for r in res32[:n_check]]
    ours8 = [r["tokens"] for r in res8[:n_check]]
    agree8 = sum(x == y for o, f in zip(ours8, ours32) for x, y in zip(o, f)) / max(1, sum(map(len, ours32)))
    ppl32 = perplexity(model_dir, "none", a.ppl_tokens, a.threads)
    ppl8 = perplexity(model_dir, "int8", a.ppl_tokens, a.threads)
    peak = peak_gemm_gflops(a.threads)
    flops = linear_flops(model_dir, requests)
    report.update(hf_greedy_requests_equal=sum(o == h for o, h in zip(ours32, hf)), greedy_checked=n_check,
                  ppl_fp32=ppl32, ppl_int8=ppl8, peak_gemm_gflops=peak, linear_tflop=flops / 1e12)
    s = {"ours_fp32_tok_s": round(out_tokens / dur32, 2),
         "llamacpp_f32_tok_s": round(report["llamacpp_f32"]["output_throughput"], 2),
         "ours_int8_tok_s": round(out_tokens / dur8, 2),
         "llamacpp_q8_tok_s": round(report["llamacpp_q8"]["output_throughput"], 2)}
    s.update(ratio_fp32=round(s["ours_fp32_tok_s"] / s["llamacpp_f32_tok_s"], 3),
             ratio_int8=round(s["ours_int8_tok_s"] / s["llamacpp_q8_tok_s"], 3),
             ppl_delta_int8=round(ppl8 / ppl32 - 1, 5),
             floor_fraction_fp32=round(flops / (dur32 * peak * 1e9), 4),
             greedy_equal=all(o == h for o, h in zip(ours32, hf)),
             int8_greedy_agreement=round(agree8, 4), threads=a.threads, **precision_info("float32"))
    if "ours_bf16" in report:
        s.update(ours_bf16_tok_s=round(report["ours_bf16"]["output_throughput"], 2),
                 llamacpp_bf16_tok_s=round(report["llamacpp_bf16"]["output_throughput"], 2))
        s["ratio_bf16"] = round(s["ours_bf16_tok_s"] / s["llamacpp_bf16_tok_s"], 3)
    s["passes"] = bool(s["ratio_fp32"] >= 1.5 and s["ratio_int8"] >= 1.5 and s["ppl_delta_int8"] <= 0.02
                       and s["greedy_equal"])
    out = Path(a.out or "runs/bench/serve-llamacpp.json")
    out.write_text(json.dumps({"summary": s, "report": report}, indent=2))
    print(json.dumps(s))
    return s


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
