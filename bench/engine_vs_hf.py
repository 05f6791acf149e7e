"""Decode speed of our serving engine (PlainEngine, KV cache) against HF `generate` on the same model.

Both decode the same prompts greedily, one request at a time, for exactly --max-tokens new tokens (no
stop tokens, so the work is equal); the script prints tokens/s for each, the ratio ours / HF, and how
many requests produced identical tokens (they must all match: same weights, same greedy argmax).

    .venv/bin/python -m bench.engine_vs_hf                       # the demo's fine-tuned checkpoint
    .venv/bin/python -m bench.engine_vs_hf --shape 125m          # random weights in a named shape
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def load(args):
    from actors.model import Transformer, get_config, load_hf, save_hf
    from actors.model.tokenizer import load_tokenizer

    ckpt = Path(args.model)
    if not (ckpt / "config.json").exists():
        raise SystemExit(f"--model {ckpt}: no HF checkpoint there; run `make demo` first or pass --model DIR")
    tok = load_tokenizer(ckpt)
    if args.shape:  # the checkpoint's tokenizer, random weights in the named shape
        torch.manual_seed(0)
        model = Transformer(get_config(args.shape, vocab_size=len(tok)))
        ckpt = save_hf(model, Path(args.work) / f"{args.shape}-random", tokenizer_dir=ckpt)
    return ckpt, tok, load_hf(ckpt).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/demo/finetune/hf", help="HF checkpoint dir (with tokenizer)")
    ap.add_argument("--shape", default=None, help="random weights in this registry shape (e.g. debug, 125m)")
    ap.add_argument("--work", default="runs/bench", help="where --shape writes its checkpoint")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from actors.serve.engine import PlainEngine, SamplingParams

    ckpt, tok, ours = load(args)
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    text = (Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt").read_text()
    step = len(text) // args.prompts  # prompts from spread-out passages, each cut to --prompt-len tokens
    prompts = [tok(text[i * step: i * step + 8 * args.prompt_len], add_special_tokens=False)["input_ids"]
               [: args.prompt_len] for i in range(args.prompts)]

    engine = PlainEngine(ours, tok)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    def run_ours(p):
        return engine.generate(p, params).token_ids

    def run_hf(p):
        with torch.inference_mode():
            out = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              do_sample=False, max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens,
                              pad_token_id=tok.pad_token_id)
        return out[0, len(p):].tolist()

    results = {}
    for name, fn in (("ours", run_ours), ("hf", run_hf)):
        fn(prompts[0])  # warm-up: first-call allocations and lazy imports stay out of the timing
        t0 = time.perf_counter()
        outs = [fn(p) for p in prompts]
        dt = time.perf_counter() - t0
        results[name] = (outs, sum(len(o) for o in outs) / dt)
    same = sum(a == b for a, b in zip(results["ours"][0], results["hf"][0]))
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"model {ckpt} ({n_params / 1e6:.2f}M params), {args.prompts} requests x {args.prompt_len} prompt "
          f"+ {args.max_tokens} new tokens, greedy, batch 1, {args.threads} threads")
    print(f"ours (PlainEngine, KV cache): {results['ours'][1]:8.1f} tokens/s")
    print(f"baseline (HF generate):       {results['hf'][1]:8.1f} tokens/s")
    print(f"ratio ours / HF generate:     {results['ours'][1] / results['hf'][1]:8.2f}x")
    print(f"identical greedy outputs:     {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
