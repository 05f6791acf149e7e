"""Eval-side batched greedy generation (actors.model.generate) against HF `generate` on the same batches.

Both decode the same chat prompts (the arith_tool task's held-out questions with the tools block, rendered by
the shared chat renderer) greedily, in static left-padded batches of --batch rows sorted by prompt length, until
an end-of-turn token or --max-tokens, at the same dtype and thread count. Prints generated tokens/s of each, the
ratio ours / HF, and how many outputs are identical (in bf16 two implementations may round differently and
diverge after a near-tie; fp32 agrees exactly). The last line is JSON.

    .venv/bin/python -m bench.eval_generate                               # the registry's SmolLM2, bf16, 1 thread
    .venv/bin/python -m bench.eval_generate --model runs/demo/finetune/hf  # the demo's fine-tuned model
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name, .gguf or HF folder")
    ap.add_argument("--cache", default="runs/models", help="where a registry name / .gguf is imported")
    ap.add_argument("--n", type=int, default=64, help="prompts")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from actors.data.synthetic import generate
    from actors.model.chat import encode_chat
    from actors.model.generate import greedy_generate
    from actors.model.hf import load_hf
    from actors.model.registry import resolve_model
    from actors.model.tokenizer import load_tokenizer, stop_token_ids
    from actors.tooltask import TOOLS, prompt_messages

    path = resolve_model(args.model, args.cache)
    dtype = getattr(torch, args.dtype)
    tok = load_tokenizer(path)
    ours = load_hf(path, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    _, held = generate(0, args.n, seed=4321)
    prompts = [encode_chat(tok, prompt_messages(r), TOOLS) for r in held]
    stops = stop_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]

    def run_ours() -> list[list[int]]:
        return greedy_generate(ours, prompts, [args.max_tokens] * len(prompts), stops, ours.config.max_position_embeddings,
                               batch_size=args.batch, pad_id=pad)

    def run_hf() -> list[list[int]]:
        out: list[list[int]] = [[] for _ in prompts]
        for b in batches:
            T = max(len(prompts[i]) for i in b)
            ids = torch.full((len(b), T), pad, dtype=torch.long)
            att = torch.zeros((len(b), T), dtype=torch.long)
            for r, i in enumerate(b):
                ids[r, T - len(prompts[i]):] = torch.tensor(prompts[i])
                att[r, T - len(prompts[i]):] = 1
            with torch.inference_mode():
                gen = hf.generate(ids, attention_mask=att, do_sample=False, max_new_tokens=args.max_tokens,
                                  eos_token_id=stops, pad_token_id=pad)
            for r, i in enumerate(b):
                toks = gen[r, T:].tolist()
                cut = next((k for k, t in enumerate(toks) if t in stops), len(toks))
                out[i] = toks[:cut]
        return out

    results = {}
    for name, fn in (("ours", run_ours), ("hf", run_hf)):
        t0 = time.perf_counter()
        outs = fn()
        dt = time.perf_counter() - t0
        results[name] = {"outputs": outs, "seconds": dt, "tokens": sum(len(o) for o in outs)}
    same = sum(a == b for a, b in zip(results["ours"]["outputs"], results["hf"]["outputs"]))
    o, h = results["ours"], results["hf"]
    print(f"model {path}, {args.n} chat prompts (mean {sum(map(len, prompts)) / len(prompts):.0f} tokens), "
          f"batch {args.batch}, <= {args.max_tokens} new tokens, greedy, {args.dtype}, {args.threads} thread(s)")
    print(f"ours (actors.model.generate): {o['tokens'] / o['seconds']:8.1f} tokens/s ({o['seconds']:.1f} s)")
    print(f"baseline (HF generate):       {h['tokens'] / h['seconds']:8.1f} tokens/s ({h['seconds']:.1f} s)")
    print(f"identical outputs:            {same}/{args.n}")
    print(json.dumps({"bench": "eval_generate", "baseline": "transformers generate (static left-padded batch)",
                      "model": str(path), "dtype": args.dtype, "threads": args.threads, "batch": args.batch,
                      "n": args.n, "ours_tokens_per_s": round(o["tokens"] / o["seconds"], 1),
                      "baseline_tokens_per_s": round(h["tokens"] / h["seconds"], 1),
                      "ratio_vs_baseline": round((o["tokens"] / o["seconds"]) / (h["tokens"] / h["seconds"]), 3),
                      "ratio_wall_time": round(h["seconds"] / o["seconds"], 3), "identical_outputs": same}))


if __name__ == "__main__":
    main()
