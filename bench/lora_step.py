"""LoRA SFT step speed on the real base: our Transformer + peft (sparse logits, bf16 frozen base) against HF
`LlamaForCausalLM` + peft on the same batches, same LoRA config, dtype and threads.

The batches are the demo's: synthetic tool-call conversations rendered by the shared chat renderer, loss on
assistant tokens only, 8 per step. Prints tokens/s (padded tokens per second, as both see the same padded
batch) of our loop's step with the base in bf16 and in fp32, and of HF's model in bf16 through the same
Trainer, plus the first step's loss of each (they must agree: same weights, same adapter init). Last line JSON.

    .venv/bin/python -m bench.lora_step [--steps 6] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cache", default="runs/models")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from actors.common.config import from_dict
    from actors.data.synthetic import generate
    from actors.model.hf import load_hf
    from actors.model.registry import resolve_model
    from actors.model.tokenizer import load_tokenizer
    from actors.train.config import FinetuneConfig, OptimConfig
    from actors.train.sft import collate, tokenize_conversation
    from actors.train.trainer import CausalLMLoss, Trainer
    from actors.train.finetune import wrap_lora

    path = resolve_model(args.model, args.cache)
    tok = load_tokenizer(path)
    train, _ = generate(args.batch * (args.steps + 1), 0, seed=99)
    exs = [tokenize_conversation(tok, r, 512) for r in train]
    batches = [collate(exs[i:i + args.batch], tok.pad_token_id) for i in range(0, len(exs), args.batch)]
    cfg = from_dict(FinetuneConfig, {"lora": {"r": 16, "alpha": 32}})

    class HFLogits(torch.nn.Module):
        """HF's model behind our call signature (logits for every position; the dense loss applies)."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, logits_mask=None):
            logits = self.m(input_ids=input_ids).logits
            return logits if logits_mask is None else logits[logits_mask]

    def ours(dtype):
        return wrap_lora(load_hf(path, dtype=dtype), cfg)

    def hf_bf16():
        m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16)
        lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(cfg.lora.target_modules))
        return HFLogits(get_peft_model(m, lcfg))

    rows = {}
    for name, make in (("ours_bf16", lambda: ours(torch.bfloat16)), ("ours_fp32", lambda: ours(torch.float32)),
                       ("hf_peft_bf16", hf_bf16)):
        torch.manual_seed(0)
        model = make()
        trainer = Trainer(model, CausalLMLoss(sparse=True), OptimConfig(lr=1e-3, warmup_steps=0), args.steps + 1)
        first = trainer.train_step(batches[0])["loss"]  # warm-up, and the loss at identical weights
        t0, tokens = time.perf_counter(), 0
        for b in batches[1:]:
            trainer.train_step(b)
            tokens += b["input_ids"].numel()
        dt = time.perf_counter() - t0
        rows[name] = {"tokens_per_s": round(tokens / dt, 1), "first_loss": round(first, 4)}
        print(f"{name:14s} {tokens / dt:7.1f} tokens/s  first-step loss {first:.4f}", flush=True)
        del model, trainer
    ours_tps, hf_tps = rows["ours_bf16"]["tokens_per_s"], rows["hf_peft_bf16"]["tokens_per_s"]
    print(json.dumps({"bench": "lora_step", "baseline": "transformers LlamaForCausalLM + peft, bf16",
                      "model": str(path), "threads": args.threads, "batch": args.batch, "steps": args.steps,
                      **rows, "ratio_vs_baseline": round(ours_tps / hf_tps, 3),
                      "ratio_bf16_vs_fp32": round(ours_tps / rows["ours_fp32"]["tokens_per_s"], 3)}))


if __name__ == "__main__":
    main()
