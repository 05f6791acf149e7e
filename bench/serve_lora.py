"""Multi-LoRA serving: 64 requests spread over 4 adapters in one replica against the same 64 requests on the base
alone (the cost of per-row adapters in one batch), and, in fp32, each adapter's requests against that adapter
merged into the base and served alone (greedy tokens, first-step logprobs).

    .venv/bin/python -m bench.serve_lora [--rank 16] [--num-prompts 64] [--rounds 2]

Adapters: peft LoRA on every projection of SmolLM2-135M (rank `--rank`, random A and B at a scale that moves the
outputs) saved under runs/bench/lora-adapters. Requests: bench/serve.py's (random prompts 32-512 tokens, outputs
16-256, greedy, `ignore_eos`), sent at once through HTTP after one warm-up request on the base and each adapter.
Rounds: each round has its own request list (seed + round), run once on the base and once over the adapters, in the
order base, adapters | adapters, base | base, adapters ... so a slow spell of a shared machine falls on both sides;
the ratio is over the rounds' summed times (each round's is reported too). Last line: JSON with `ratio` (adapters'
output tok/s over the base's), `adapters`, `greedy_agreement` (token share equal to the merged adapter's),
`max_logit_diff` (largest first-step logprob difference over the top 5), `passes` (ratio >= 0.8, agreement >= 0.98,
diff <= 1e-3).
"""
from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from bench.serve import _free_port, make_requests, run_load, setup
from cluster.hardware import precision_info


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len-min", type=int, default=32)
    ap.add_argument("--input-len-max", type=int, default=512)
    ap.add_argument("--output-len-min", type=int, default=16)
    ap.add_argument("--output-len-max", type=int, default=256)
    ap.add_argument("--merged-check", type=int, default=4,
                    help="requests per adapter and round checked against the merge")
    ap.add_argument("--rounds", type=int, default=2, help="request lists, each run on the base and on the adapters")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {a.rounds}")
    a.max_concurrency, a.request_rate, a.greedy_check = a.num_prompts, float("inf"), a.num_prompts
    return a


def make_adapters(model_dir: str, root: Path, n: int, rank: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    from actors.model import load_hf

    out = []
    for i in range(n):
        d = root / f"r{rank}-{i}"
        if not (d / "adapter_model.safetensors").exists():
            model = get_peft_model(load_hf(model_dir), LoraConfig(
                r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
            g = torch.Generator().manual_seed(100 + i)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_A" in name or "lora_B" in name:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            model.save_pretrained(str(d))
        out.append(d)
    return out


def main(argv=None) -> dict:
    a = parse(argv)
    import torch

    from actors.engine import EngineConfig, LLMEngine, SamplingParams
    from actors.model import load_hf
    from actors.model.lora import merge_lora_
    from actors.model.tokenizer import load_tokenizer
    from actors.serve.config import ServeConfig
    from actors.serve.deployment import start_server, stop_server

    model_dir, requests = setup(a)
    adapters = make_adapters(model_dir, Path("runs/bench/lora-adapters"), a.adapters, a.rank)
    names = [f"a{i}" for i in range(a.adapters)]
    cfg = ServeConfig(model=model_dir, model_name="bench", port=_free_port(), dtype="float32",
                      torch_threads=a.threads, num_cpus=a.threads, max_ongoing_requests=max(a.num_prompts, 64),
                      lora_modules={n: str(p) for n, p in zip(names, adapters)},
                      engine=EngineConfig(max_num_seqs=64, kv_cache_memory="3GiB", max_loras=a.adapters))
    url = start_server(cfg, app_name="bench-lora", timeout_s=600)
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    rounds = [requests] + [make_requests(argparse.Namespace(**{**vars(a), "seed": a.seed + r}), vocab)
                           for r in range(1, a.rounds)]
    base_s, lora_s, lora = [0.0] * a.rounds, [0.0] * a.rounds, [None] * a.rounds
    try:
        # warm-up: the base and each adapter once, so the timed runs compare batching, not the adapters' first
        # load from disk (a one-time cost per replica, ~20 ms each)
        for m in ["bench", *(f"bench:{n}" for n in names)]:
            asyncio.run(run_load(url, m, [(requests[0][0][:16], 4)], a))
        for r, reqs in enumerate(rounds):
            per = [f"bench:{names[i % a.adapters]}" for i in range(len(reqs))]
            for side in (("base", "lora") if r % 2 == 0 else ("lora", "base")):
                if side == "base":
                    _, base_s[r] = asyncio.run(_run_models(url, ["bench"] * len(reqs), reqs, a))
                else:
                    lora[r], lora_s[r] = asyncio.run(_run_models(url, per, reqs, a))
            print(f"round {r}: base {base_s[r]:.1f}s, adapters {lora_s[r]:.1f}s, ratio "
                  f"{base_s[r] / lora_s[r]:.3f}", flush=True)
    finally:
        stop_server("bench-lora")
    out_tokens = sum(n for reqs in rounds for _, n in reqs)
    torch.set_num_threads(a.threads)
    tok = load_tokenizer(model_dir)
    same = total = 0
    max_diff, worst = 0.0, {}
    for i, (name, path) in enumerate(zip(names, adapters)):
        merged = merge_lora_(load_hf(model_dir, dtype=torch.float32), path)
        engine = LLMEngine(merged, tok, EngineConfig(kv_cache_memory="2GiB"))
        for r, reqs in enumerate(rounds):
            idx = [j for j in range(len(reqs)) if j % a.adapters == i][:a.merged_check]
            outs = engine.generate_many([reqs[j][0] for j in idx], [SamplingParams(
                temperature=0, max_tokens=reqs[j][1], ignore_eos=True, logprobs=5) for j in idx])
            for j, o in zip(idx, outs):
                got = lora[r][j]["tokens"]
                same += sum(x == y for x, y in zip(got, o.token_ids))
                total += len(o.token_ids)
                first = {t: v for t, v in o.logprobs[0].top}
                served = lora[r][j]["first_top"]
                d = max(abs(first[t] - v) for t, v in served.items() if t in first)
                if d > max_diff:   # which request, to trace its first step's path when it is off
                    worst = {"round": r, "request": j, "adapter": name, "prompt_len": len(reqs[j][0]), "diff": d}
                max_diff = max(max_diff, d)
    s = {"ratio": round(sum(base_s) / sum(lora_s), 3), "adapters": a.adapters, "rank": a.rank,
         "greedy_agreement": round(same / total, 4), "max_logit_diff": float(f"{max_diff:.3g}"),
         "base_out_tok_s": round(out_tokens / sum(base_s), 2), "lora_out_tok_s": round(out_tokens / sum(lora_s), 2),
         "round_ratios": [round(b / x, 3) for b, x in zip(base_s, lora_s)],
         "threads": a.threads, **precision_info("float32")}
    s["passes"] = bool(s["ratio"] >= 0.8 and s["greedy_agreement"] >= 0.98 and max_diff <= 1e-3)
    out = Path("runs/bench/serve-lora.json")
    out.write_text(json.dumps({**s, "worst_first_step": worst}, indent=2))
    print(json.dumps(s))
    return s


async def _run_models(url: str, models: list[str], requests, a):
    """Every request streamed at once, each to its own `model`, with token ids and first-step top-5 logprobs."""
    import time

    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=3600,
                                 limits=httpx.Limits(max_connections=len(requests) + 8)) as http:
        async def one(model, prompt, n):
            body = {"model": model, "prompt": prompt, "max_tokens": n, "ignore_eos": True, "temperature": 0,
                    "logprobs": 5, "return_tokens_as_token_ids": True}
            r = await http.post("/v1/completions", json=body)
            r.raise_for_status()
            lp = r.json()["choices"][0]["logprobs"]
            return {"tokens": [int(t.split(":", 1)[1]) for t in lp["tokens"]],
                    "first_top": {int(t.split(":", 1)[1]): v for t, v in lp["top_logprobs"][0].items()}}

        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(m, p, n) for m, (p, n) in zip(models, requests)))
        return res, time.perf_counter() - t0


if __name__ == "__main__":
    main()
