"""Rule-based synthetic task: multi-digit arithmetic answered *through a calculator tool call*.

A tiny model cannot do 4-digit arithmetic, but it can learn in minutes to copy the expression into a
tool call and the tool's result into the answer, so the task is learnable on CPU and scored exactly.

Record (JSONL), one conversation in OpenAI message format:
    {"id", "split", "expression", "answer", "tools": TOOLS,
     "messages": [user, assistant{tool_calls}, tool{content=answer}, assistant{content}]}
Train and held-out splits never share an expression.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

CALCULATOR_SPEC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. 12 * (3 + 4)"}},
            "required": ["expression"],
        },
    },
}
PYTHON_SPEC = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Evaluate a Python arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "e.g. max(3, 7) ** 2"}},
            "required": ["code"],
        },
    },
}
TOOLS = [CALCULATOR_SPEC, PYTHON_SPEC]

QUESTION_TEMPLATES = [
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "What does {e} equal?",
    "Use the calculator: {e}",
    "计算 {e}",
    "{e} 等于多少？",
]
ANSWER_TEMPLATES = ["{e} = {a}", "The answer is {a}.", "{a}", "答案是 {a}。"]
OPS = ["+", "-", "*"]


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    d = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (d - 1), 10 ** d - 1)


def make_expression(rng: random.Random, min_digits: int = 2, max_digits: int = 4) -> tuple[str, int]:
    a, b, op = _number(rng, min_digits, max_digits), _number(rng, min_digits, max_digits), rng.choice(OPS)
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"{a} {op} {b}", value


def make_record(rng: random.Random, idx: int, split: str, expression: str, answer: int) -> dict:
    q = rng.choice(QUESTION_TEMPLATES).format(e=expression)
    final = rng.choice(ANSWER_TEMPLATES).format(e=expression, a=answer)
    return {
        "id": f"arith-{split}-{idx}",
        "split": split,
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
            splits[split].append(make_record(rng, len(splits[split]), split, e, v))
    return splits["train"], splits["heldout"]


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return p


def prompt_messages(record: dict) -> list[dict]:
    """The messages a model sees before its first (tool-calling) turn."""
    msgs = record["messages"]
    return msgs[: next(i for i, m in enumerate(msgs) if m["role"] == "assistant")]
