"""Rule-based synthetic task: multi-digit arithmetic answered *through a calculator tool call*.

A small model cannot do 4-digit arithmetic, but it can learn to copy the expression into a tool call and
the tool's result into the answer, so the task is learnable and scored exactly. Tool specs, the call format
and answer extraction are the shared contract's (actors.tooltask).

Record (JSONL), one conversation in OpenAI message format:
    {"id", "split", "phrasing": "seen"|"unseen", "lang": "en"|"zh", "expression", "answer", "tools": TOOLS,
     "messages": [user, assistant{tool_calls}, tool{content=answer}, assistant{content}]}
Train and held-out splits never share an expression.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from actors.tooltask import TOOLS

# Training sees only these English phrasings. The held-out split mixes them with phrasings (and a language)
# training never saw, so the eval and the agent measure generalisation, not recall of a template.
TRAIN_QUESTIONS = [
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "What does {e} equal?",
    "Use the calculator: {e}",
]
UNSEEN_QUESTIONS = {
    "en": ["Could you work out {e} for me?", "I need the result of {e}.", "Quick question: {e} = ?",
           "Tell me the value of {e}.", "Please evaluate {e}."],
    "zh": ["计算 {e}", "{e} 等于多少？", "请帮我算一下 {e}。", "{e} 的结果是多少？"],
}
ANSWER_TEMPLATES = {"en": ["{e} = {a}", "The answer is {a}.", "{a}"], "zh": ["答案是 {a}。", "{e} = {a}"]}
# Held-out record i takes phrasing HELDOUT_CYCLE[i % 4]: half seen, a quarter unseen English, a quarter Chinese,
# so any prefix of the held-out file (the agent's first n_eval rows) is at least half unseen phrasings.
HELDOUT_CYCLE = [("seen", "en"), ("unseen", "en"), ("seen", "en"), ("unseen", "zh")]
OPS = ["+", "-", "*"]


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    d = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (d - 1), 10 ** d - 1)


def make_expression(rng: random.Random, min_digits: int = 2, max_digits: int = 4) -> tuple[str, int]:
    a, b, op = _number(rng, min_digits, max_digits), _number(rng, min_digits, max_digits), rng.choice(OPS)
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"{a} {op} {b}", value


def make_record(rng: random.Random, idx: int, split: str, expression: str, answer: int,
                phrasing: str = "seen", lang: str = "en") -> dict:
    pool = TRAIN_QUESTIONS if phrasing == "seen" else UNSEEN_QUESTIONS[lang]
    q = rng.choice(pool).format(e=expression)
    final = rng.choice(ANSWER_TEMPLATES[lang]).format(e=expression, a=answer)
    return {
        "id": f"arith-{split}-{idx}",
        "split": split,
        "phrasing": phrasing,
        "lang": lang,
        "expression": expression,
        "answer": str(answer),
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": q},
            {"role": "assistant", "content": "", "tool_calls": [{
                "id": f"call_{idx}", "type": "function",
                "function": {"name": "calculator", "arguments": json.dumps({"expression": expression})},
            }]},
            {"role": "tool", "tool_call_id": f"call_{idx}", "name": "calculator", "content": str(answer)},
            {"role": "assistant", "content": final},
        ],
    }


def generate(n_train: int, n_heldout: int, seed: int = 0, min_digits: int = 2,
             max_digits: int = 4) -> tuple[list[dict], list[dict]]:
    """Disjoint train / held-out splits (held-out expressions are drawn first and excluded from train)."""
    if n_train < 0 or n_heldout < 0:
        raise ValueError("synthetic sizes must be >= 0")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {"heldout": [], "train": []}
    for split, n in (("heldout", n_heldout), ("train", n_train)):
        tries = 0
        while len(splits[split]) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct expressions with {min_digits}-{max_digits} digits")
            e, v = make_expression(rng, min_digits, max_digits)
            if e in seen:
                continue
            seen.add(e)
            i = len(splits[split])
            phrasing, lang = HELDOUT_CYCLE[i % len(HELDOUT_CYCLE)] if split == "heldout" else ("seen", "en")
            splits[split].append(make_record(rng, i, split, e, v, phrasing, lang))
    return splits["train"], splits["heldout"]


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return p
