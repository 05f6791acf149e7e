"""Why the demo's fine-tuned model cannot pass the synthetic task's exact match: it never learns to copy.

The arith_tool task needs the model to copy the user's expression into the tool call (and the tool's result
into the answer). This probe measures how many training steps the demo's model shape needs to learn a copy:

  copy  — pure copy task, loss on the copied tokens only: `filler e [suffix] filler(m) e`, e a digit
          expression; the gap between source and copy is FIXED (--suffix 1) or VARIES by up to
          --suffix-1 tokens (as it does in the chat format, where templates and lengths differ).
  task  — the real thing: SFT of a checkpoint on the synthetic arith_tool conversations (chat template,
          loss on assistant turns), measuring on held-out conversations the fraction whose whole tool-call
          turn is predicted exactly under teacher forcing (= greedy decoding gets the call right).

Measured on this 2-core machine (1 thread, batch 12, debug shape: 1.7M params at vocab 320):
  copy, fixed gap 50, 2-digit operands:        exact 0.2-0.4 by step 250-400 (random or pretrained init)
  copy, gap varying by 0-6, 1-3 digit operands: exact 0.00 at step 600 (lr 1e-3 and 2e-3)
  task, full fine-tune of the demo checkpoint:  call exact 0.00 after 400 steps (lr 1e-3, 3e-3); with
        fixed-width operands and results 0.08 after 800 steps (~270 s on one core without the tools
        system prompt) — the demo's whole fine-tune budget is ~150 steps.
So the demo shape learns a fixed-offset copy in a few hundred steps but no content-addressed (induction)
copy within the 10-minute budget; see docs/architecture.md "Demo sizing".

    .venv/bin/python -m bench.copy_probe copy --suffix 1      # fixed gap
    .venv/bin/python -m bench.copy_probe copy --suffix 7      # varying gap
    .venv/bin/python -m bench.copy_probe task --run-dir runs/demo --lr 1e-3
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

from actors.train.config import OptimConfig
from actors.train.sft import collate
from actors.train.trainer import CausalLMLoss, Trainer
from cluster.hardware import precision_info


def copy_task(gap: int, suffix: int, dmin: int, dmax: int):
    """A sampler of `filler(20) e suffix gap e <eos>` rows; gap and suffixes are fixed strings (a template)."""
    digits, ops, space = list(range(10, 20)), [20, 21, 22], 23          # arbitrary fixed token ids
    fixed = random.Random(1)
    filler = [fixed.randrange(100, 300) for _ in range(gap)]
    suffixes = [[fixed.randrange(100, 300) for _ in range(k)] for k in range(suffix)]

    def draw(rng: random.Random, n: int) -> list[dict]:
        def number():
            return [rng.choice(digits[1:])] + [rng.choice(digits) for _ in range(rng.randint(dmin, dmax) - 1)]

        out = []
        for _ in range(n):
            e = number() + [space, rng.choice(ops), space] + number()
            pre = [rng.randrange(100, 300) for _ in range(20)] + e + rng.choice(suffixes) + filler
            out.append({"input_ids": pre + e + [1], "labels": [-100] * len(pre) + e + [1]})
        return out

    return draw


def task_examples(run_dir: str, n_heldout: int) -> tuple[list[dict], list[dict], object]:
    from actors.common.metrics import read_jsonl
    from actors.model.tokenizer import load_tokenizer
    from actors.train.sft import tokenize_conversation

    tok = load_tokenizer(f"{run_dir}/data/tokenizer")
    syn = f"{run_dir}/data/synthetic"
    train = [tokenize_conversation(tok, r, 1024) for r in read_jsonl(f"{syn}/arith_train.jsonl", None)]
    held = []
    for r in read_jsonl(f"{syn}/arith_heldout.jsonl", n_heldout):
        ex = tokenize_conversation(tok, r, 1024)
        i = next(k for k, t in enumerate(ex["labels"]) if t != -100)   # the tool-call turn only
        j = next(k for k in range(i, len(ex["labels"])) if ex["labels"][k] == -100)
        held.append({"input_ids": ex["input_ids"][:j], "labels": [-100] * i + ex["labels"][i:j]})
    return train, held, tok


@torch.no_grad()
def exact(model, examples: list[dict], pad_id: int) -> float:
    """Fraction of examples whose every labelled token is the argmax under teacher forcing."""
    model.eval()
    ok = 0
    for k in range(0, len(examples), 16):
        b = collate(examples[k:k + 16], pad_id)
        pred, lab = model(b["input_ids"]).argmax(-1)[:, :-1], b["labels"][:, 1:]
        ok += int(((pred == lab) | (lab == -100)).all(1).sum())
    return ok / len(examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["copy", "task"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--gap", type=int, default=50, help="copy: fixed tokens between source and copy")
    ap.add_argument("--suffix", type=int, default=1, help="copy: 1 = fixed gap; k = gap varies by 0..k-1")
    ap.add_argument("--digits", default="2-2", help="copy: operand digits, min-max")
    ap.add_argument("--run-dir", default="runs/demo", help="task: a finished run (data + pretrain)")
    ap.add_argument("--init", default=None, help="HF checkpoint to start from (task: the run's pretrain)")
    ap.add_argument("--every", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = random.Random(0)

    from actors.model import Transformer, get_config, load_hf

    if args.mode == "copy":
        dmin, dmax = (int(x) for x in args.digits.split("-"))
        draw = copy_task(args.gap, args.suffix, dmin, dmax)
        held, pad_id, init = draw(random.Random(2), 64), 0, args.init

        def next_batch():
            return draw(rng, args.batch_size)
    else:
        train, held, tok = task_examples(args.run_dir, 64)
        pad_id, init = tok.pad_token_id or 0, args.init or f"{args.run_dir}/pretrain/hf"

        def next_batch():
            return rng.sample(train, args.batch_size)
    model = load_hf(init) if init else Transformer(get_config("debug", vocab_size=320))
    trainer = Trainer(model, CausalLMLoss(sparse=True), OptimConfig(lr=args.lr, warmup_steps=10, weight_decay=0.0),
                      args.steps)
    t0 = time.perf_counter()
    r = {"loss": float("nan")}
    for s in range(1, args.steps + 1):
        r = trainer.train_step(collate(next_batch(), pad_id))
        if s % args.every == 0:
            print(f"{args.mode} step {s:4d} loss {r['loss']:.3f} held-out exact {exact(model, held, pad_id):.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    print(json.dumps({"mode": args.mode, "steps": args.steps, "final_loss": round(float(r["loss"]), 4),
                      "heldout_exact": exact(model, held, pad_id), "seconds": round(time.perf_counter() - t0, 1),
                      **precision_info("float32")}))


if __name__ == "__main__":
    main()
