"""Rule-based tool-call compositions, so a small model sees every shape BFCL scores.

Single-call conversations from the shared tool-call SFT sets (glaive) are composed into
- `multiple`: the same exchange with 1-3 other tools offered besides the right one (choose the function);
- `parallel`: several values of one argument in one request ("the tip on $50 and $80"), or two requests to the
  same function in one user turn ("... Also, ..."), answered by all the calls in one assistant turn;
- `parallel_multiple`: two requests to different functions, both calls in one turn, both tools offered;
- `irrelevance`: a request offered only tools that do not fit it, answered without a call;
with 2 in 5 of these given dotted function names ("api.get_weather", "calculate_tip.run") as BFCL's often are.
These end after the calls, as APIGen/xLAM's rows do: the loss falls on choosing and filling the calls (~40%
of a composed row's trained text was answers joined from two unrelated exchanges); glaive's own rows,
`parallel_arith` and `chain` teach answering from results. Our own rules give
- `parallel_arith`: two or three calculator expressions asked at once (one call each, one turn);
- `chain`: compute, then use the result (a second calculator call on the first one's value);
- `python`: questions a Python expression answers (sums over ranges, powers, digit sums), through the python tool;
- `retrieval`: a question about a phrase of a document, a search_docs call, and an answer citing "[doc id]"
  (the search result shows the right passage among passages of other documents, in search_docs' own format);
- `code` and `react`: arithmetic, chained and python questions in the text formats of the code agent (a Python
  block calling the tools as functions, ending in final_answer) and of ReAct (Thought / Action / Action Input,
  Observation, Final Answer), with the prompts the agent styles use (actors.tooltask).
`heldout` makes the agent's held-out python and retrieval questions; their values, and the sentences retrieval
questions come from, never occur in the training rows.

Only the shared SFT conversations and rules here are used, never benchmark rows. Requests are joined only within
one language (a Chinese and an English request never share a turn). Pure Python (no torch, no Ray).
"""
from __future__ import annotations

import json
import random
import re

from actors.data import apisynth
from actors.data.apisynth import name_words
from actors.tooltask import (CODE_PROMPT, REACT_PROMPT, SEARCH_DOCS_SPEC, TOOLS, code_tool_lines, format_number,
                              format_passages, react_tool_lines)

AGENT_TOOLS = TOOLS + [SEARCH_DOCS_SPEC]   # the demo agent's tools, in its order
_API = {f.name for f in apisynth.FUNCTIONS}

_CJK = re.compile(r"[\u4e00-\u9fff]")
# a greeting opening the second request ("Hi, can you ..." -> "Also, can you ...")
_GREETING = re.compile(r"^(hi|hello|hey|你好|您好)[,!.，！。 ]*\s*(there[,!.]?\s*)?", re.I)
_JOIN = {"en": " Also, ", "zh": " 另外，"}
_ARITH_ASK = {"en": ["What are {l}?", "Compute {l}.", "Calculate {l}."], "zh": ["计算 {l}。", "{l} 分别等于多少？"]}
_LIST_SEP = {"en": (", ", " and "), "zh": ("、", "和")}


def lang_of(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def single_calls(records: list[dict]) -> list[dict]:
    """Exchanges that open with one user turn answered by one tool call, its result and an answer:
    {"lang", "user", "call", "result", "answer", "spec", "tools"} (the called function's spec found in tools)."""
    out = []
    for r in records:
        m = [x for x in r.get("messages", []) if x["role"] != "system"]
        if len(m) < 4 or m[0]["role"] != "user" or len(m[1].get("tool_calls") or []) != 1:
            continue
        if m[2]["role"] != "tool" or m[3]["role"] != "assistant" or m[3].get("tool_calls") or not m[3]["content"]:
            continue
        call = m[1]["tool_calls"][0]["function"]
        spec = next((t for t in r.get("tools") or [] if t["function"]["name"] == call["name"]), None)
        if spec is None:
            continue
        out.append({"lang": lang_of(m[0]["content"]), "user": m[0]["content"].strip(), "call": call,
                    "result": m[2]["content"], "answer": m[3]["content"].strip(), "spec": spec,
                    "tools": r.get("tools") or [spec]})
    return out


def _conversation(rid: str, kind: str, user: str, calls: list[dict], results: list[str] | None, answer: str,
                  tools: list[dict]) -> dict:
    """The request, its calls in one turn, then (unless `results` is None) the results and the answer."""
    tcs = [{"id": f"call_{i}", "type": "function", "function": c} for i, c in enumerate(calls)]
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": "", "tool_calls": tcs}]
    if results is not None:
        msgs += [{"role": "tool", "tool_call_id": tc["id"], "name": tc["function"]["name"], "content": res}
                 for tc, res in zip(tcs, results)]
        msgs.append({"role": "assistant", "content": answer})
    return {"id": rid, "kind": kind, "messages": msgs, "tools": tools}


def _distinct_specs(specs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for s in specs:
        if s["function"]["name"] not in seen:
            seen.add(s["function"]["name"])
            out.append(s)
    return out


def multiple(ex: list[dict], n: int, rng: random.Random) -> list[dict]:
    """The exchange with 1-3 other tools offered; half the time one of them shares a name word with the right one
    (number_theory.gcd beside number_theory.lcm), so names are read, not guessed from the topic."""
    pool = _distinct_specs([s for e in ex for s in e["tools"]])
    out = []
    for i in range(n if ex else 0):
        e = rng.choice(ex)
        others = [s for s in pool if s["function"]["name"] not in {t["function"]["name"] for t in e["tools"]}]
        near = [s for s in others if name_words(s["function"]["name"]) & name_words(e["call"]["name"])]
        # a sibling only from the exchange's own source: glaive's convert_currency and apisynth's
        # currency.convert answer the same request
        close = [s for s in near if (s["function"]["name"] in _API) == (e["call"]["name"] in _API)]
        extra = [rng.choice(close)] if close and rng.random() < 0.5 else []
        others = [s for s in others if s not in near]
        tools = e["tools"] + extra + rng.sample(others, min(len(others), rng.randint(1, 3) - len(extra)))
        rng.shuffle(tools)
        out.append(_conversation(f"toolmix-multiple-{i}", "multiple", e["user"], [e["call"]], None, "", tools))
    return out


def _pairs(ex: list[dict], same: bool) -> list[tuple[dict, dict]]:
    pairs = []
    for i, a in enumerate(ex):
        for b in ex[i + 1:]:
            if a["lang"] != b["lang"] or (a["call"]["name"] == b["call"]["name"]) != same:
                continue
            if same:   # two different requests of one function: the same argument names, other values
                x, y = json.loads(a["call"]["arguments"]), json.loads(b["call"]["arguments"])
                if not isinstance(x, dict) or not isinstance(y, dict) or x.keys() != y.keys() or x == y:
                    continue
            pairs.append((a, b))
    return pairs


def parallel(ex: list[dict], n: int, rng: random.Random, same: bool) -> list[dict]:
    """Two exchanges in one turn: the same function twice (`same`, BFCL parallel) or two functions."""
    kind = "parallel" if same else "parallel_multiple"
    pairs = _pairs(ex, same)
    rng.shuffle(pairs)
    out, seen = [], set()
    for a, b in pairs:
        if len(out) == n:
            break
        if (a["user"], b["user"]) in seen:   # glaive repeats some requests word for word
            continue
        seen.add((a["user"], b["user"]))
        i = len(out)
        tools = _distinct_specs(a["tools"] + b["tools"])
        rng.shuffle(tools)
        second = _GREETING.sub("", b["user"])
        second = second[:1].lower() + second[1:] if a["lang"] == "en" and second[1:2].islower() else second
        out.append(_conversation(f"toolmix-{kind}-{i}", kind, a["user"] + _JOIN[a["lang"]] + second,
                                 [a["call"], b["call"]], None, "", tools))
    return out


def parallel_inline(ex: list[dict], n: int, rng: random.Random) -> list[dict]:
    """One request naming several values of one argument ("the tip on $50 and on $80"), as BFCL's parallel rows
    ask: an argument value of exchange a that its user text spells once is joined by the values other exchanges of
    the same function gave that argument, and the function is called once per value."""
    by_fn: dict[str, list[dict]] = {}
    for e in ex:
        by_fn.setdefault(e["call"]["name"], []).append(e)
    cands = []
    for a in ex:
        args = json.loads(a["call"]["arguments"])
        if not isinstance(args, dict) or a["call"]["name"] in _API:   # apisynth's come whole: parallel_clauses
            continue
        for k, v in args.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)) or len(str(v)) < 2 \
                    or a["user"].count(str(v)) != 1:
                continue
            others = []
            for b in by_fn[a["call"]["name"]]:
                w = (json.loads(b["call"]["arguments"]) or {}).get(k) if b is not a and b["lang"] == a["lang"] else None
                if w is not None and type(w) is type(v) and w != v and str(w) not in a["user"] and w not in others:
                    others.append(w)
            if others:
                cands.append((a, k, v, others))
    rng.shuffle(cands)
    out = []
    for a, k, v, others in cands[:n]:
        extra = rng.sample(others, min(len(others), rng.choice([1, 1, 2])))
        vals = [v] + extra
        text = a["user"].replace(str(v), _listing([str(x) for x in vals], a["lang"]), 1)
        base = json.loads(a["call"]["arguments"])
        calls = [{"name": a["call"]["name"], "arguments": json.dumps({**base, k: x}, ensure_ascii=False)}
                 for x in vals]
        out.append(_conversation(f"toolmix-parallel-inline-{len(out)}", "parallel", text, calls, None, "",
                                 a["tools"]))
    return out


_REFUSAL = {"en": "I'm sorry, but none of the available functions can help with that request.",
            "zh": "抱歉，现有的函数都无法完成这个请求。"}


def irrelevance(ex: list[dict], n: int, rng: random.Random, near: list[tuple[str, list[dict], str]] = ()) -> list[dict]:
    """A request offered only tools that do not fit it (other functions sharing no name word with the one
    it needs), answered without a call, as BFCL's irrelevance rows expect; `near` (apisynth.near_misses:
    functions of the request's own domain that cannot answer it) fills half of them when given."""
    pool = _distinct_specs([s for e in ex for s in e["tools"]])
    asks = []
    for _ in range(n - len(near[: n // 2]) if ex else 0):
        e = rng.choice(ex)
        need = set().union(*(name_words(t["function"]["name"]) for t in e["tools"]))
        others = [s for s in pool if not name_words(s["function"]["name"]) & need]
        asks.append((e["user"], rng.sample(others, min(len(others), rng.randint(1, 3))), e["lang"]))
    asks += [(u, t, "en") for u, t, _ in near[: n // 2]]
    return [{"id": f"toolmix-irrelevance-{i}", "kind": "irrelevance", "tools": tools, "messages": [
        {"role": "user", "content": user}, {"role": "assistant", "content": _REFUSAL[lang]}]}
        for i, (user, tools, lang) in enumerate(asks) if tools]


_NAMESPACES = ["api", "tools", "utils", "math", "finance", "travel", "media", "data"]
_SUFFIXES = ["get", "run", "calculate", "search", "compute", "lookup"]


def namespaced(conv: dict, rng: random.Random) -> dict:
    """The conversation with every function renamed "ns.name" or "name.verb" (as BFCL's and many APIs' names
    are), in its tools, calls and tool messages alike, so a model learns to copy a dotted name whole."""
    names = {t["function"]["name"] for t in conv.get("tools") or []}
    if any("." in n for n in names):   # already dotted (apisynth's): left as they are
        return conv
    new = {n: (f"{rng.choice(_NAMESPACES)}.{n}" if rng.random() < 0.5 else f"{n}.{rng.choice(_SUFFIXES)}")
           for n in sorted(names)}   # sorted: set order varies with PYTHONHASHSEED
    conv = json.loads(json.dumps(conv))
    for t in conv.get("tools") or []:
        t["function"]["name"] = new[t["function"]["name"]]
    for m in conv["messages"]:
        for c in m.get("tool_calls") or []:
            c["function"]["name"] = new.get(c["function"]["name"], c["function"]["name"])
        if m["role"] == "tool" and m.get("name") in new:
            m["name"] = new[m["name"]]
    return conv


def _listing(items: list[str], lang: str) -> str:
    sep, last = _LIST_SEP[lang]
    return sep.join(items[:-1]) + last + items[-1]


def parallel_arith(n: int, rng: random.Random, exclude: set[str]) -> list[dict]:
    """Two or three calculator expressions asked at once; `exclude` keeps the held-out expressions out."""
    from actors.data.synthetic import make_expression

    out = []
    while len(out) < n:
        k, lang = rng.choice([2, 2, 3]), rng.choice(["en", "en", "en", "zh"])
        exprs = [make_expression(rng) for _ in range(k)]
        if any(e in exclude for e, _ in exprs) or len({e for e, _ in exprs}) < k:
            continue
        calls = [{"name": "calculator", "arguments": json.dumps({"expression": e})} for e, _ in exprs]
        user = rng.choice(_ARITH_ASK[lang]).format(l=_listing([e for e, _ in exprs], lang))
        answer = _listing([f"{e} = {v}" for e, v in exprs], lang)
        out.append(_conversation(f"toolmix-parallel_arith-{len(out)}", "parallel_arith", user, calls,
                                 [str(v) for _, v in exprs], answer, AGENT_TOOLS))
    return out


# Questions whose answer is one Python expression (the python tool's job: loops and builtins a calculator lacks).
_PY_TASKS = [
    ("What is the sum of the integers from {a} to {b}?", "sum(range({a}, {b} + 1))"),
    ("What is the sum of the squares of the integers from 1 to {a}?", "sum(i ** 2 for i in range(1, {a} + 1))"),
    ("How many multiples of {c} are there between 1 and {b}?", "len([i for i in range(1, {b} + 1) if i % {c} == 0])"),
    ("What is {c} to the power of {d}?", "{c} ** {d}"),
    ("What is the sum of the digits of {b}{a}?", "sum(int(ch) for ch in str({b}{a}))"),
    ("What is the largest of {a}, {b} and {e}?", "max({a}, {b}, {e})"),
    ("Use Python to compute the product of {c}, {d} and {a}.", "{c} * {d} * {a}"),
]
_PY_TASKS_ZH = [
    ("从 {a} 到 {b} 的整数之和是多少？", "sum(range({a}, {b} + 1))"),
    ("{c} 的 {d} 次方是多少？", "{c} ** {d}"),
]


def _python_task(rng: random.Random, lang: str) -> tuple[str, str, str]:
    """(question, code, value) from our own templates."""
    q, code = rng.choice(_PY_TASKS_ZH if lang == "zh" else _PY_TASKS)
    v = {"a": rng.randint(10, 99), "b": rng.randint(100, 999), "c": rng.randint(2, 9), "d": rng.randint(2, 12),
         "e": rng.randint(100, 9999)}
    code = code.format(**v)
    value = format_number(eval(code, {"__builtins__": {"sum": sum, "range": range, "len": len, "int": int,
                                                      "str": str, "max": max}}))  # our own fixed templates
    return q.format(**v), code, value


def _answer(value, lang: str) -> str:
    return f"The answer is {value}." if lang == "en" else f"答案是 {value}。"


def python_rows(n: int, rng: random.Random, exclude: set[str]) -> list[dict]:
    out = []
    while len(out) < n:
        lang = "zh" if len(out) % 5 == 4 else "en"
        q, code, value = _python_task(rng, lang)
        if q in exclude:
            continue
        out.append(_conversation(f"toolmix-python-{len(out)}", "python", q,
                                 [{"name": "python", "arguments": json.dumps({"code": code})}], [value],
                                 _answer(value, lang),
                                 AGENT_TOOLS))
    return out


_CHAIN_ASK = ["Compute {e}, then {step}.", "Calculate {e} and then {step}.", "First compute {e}. Then {step}.",
              "Evaluate {e}. Next, {step}.", "Begin with {e}; next, {step}.", "Get {e} and {step}."]
_CHAIN_STEP = {"+": "add {n} to the result", "-": "subtract {n} from the result", "*": "multiply the result by {n}"}
# Training rows draw their frames and steps from wider lists, each frame with its one-step twin: the same frame
# without the step is answered after one call, so whether to call again is read from the request, not from
# how many calls came before (with 50 chains against ~300 one-call rows a model answered every two-step request
# with the first value).
_CHAIN_TRAIN = [("Compute {e}, then {step}.", "Compute {e}."),
                ("Calculate {e} and then {step}.", "Calculate {e}."),
                ("First compute {e}. Then {step}.", "Compute {e} for me."),
                ("Evaluate {e}. Next, {step}.", "Evaluate {e}."),
                ("Begin with {e}; next, {step}.", "Begin with {e} and tell me the value."),
                ("Get {e} and {step}.", "Get {e}."),
                ("Solve {e}, then {step}.", "Solve {e}."),
                ("Please calculate {e}; afterwards, {step}.", "Please calculate {e}."),
                ("Determine {e}. Once you have it, {step}.", "Determine {e}."),
                ("I need {e}, and then {step}.", "I need {e}."),
                ("先计算 {e}，然后{step}。", "计算 {e}。"),
                ("请算出 {e}，再{step}。", "请算出 {e}。")]
_CHAIN_TRAIN_STEP = {
    "en": {"+": ["add {n} to the result", "add {n} to it", "increase that by {n}", "add {n} to that value"],
           "-": ["subtract {n} from the result", "take {n} away from it", "subtract {n} from that",
                 "reduce that by {n}"],
           "*": ["multiply the result by {n}", "multiply it by {n}", "multiply that by {n}", "scale that by {n}"]},
    "zh": {"+": ["把结果加上 {n}", "再加 {n}"], "-": ["从结果中减去 {n}", "再减去 {n}"],
           "*": ["把结果乘以 {n}", "再乘以 {n}"]}}


def chain_task(rng: random.Random, ask: list[str], steps: dict | None = None) -> tuple[str, list[str], list[int]]:
    """(question, [expression 1, expression 2 on its value], [value 1, value 2]): compute, then use the result.
    `steps` maps an operator to its phrasings (default: one fixed phrasing each)."""
    from actors.data.synthetic import make_expression

    e, v = make_expression(rng, 2, 3)
    op, n = rng.choice("+-*"), rng.randint(2, 99)
    step = rng.choice(steps[op]) if steps else _CHAIN_STEP[op]
    e2 = f"{v} {op} {n}"
    v2 = v + n if op == "+" else v - n if op == "-" else v * n
    return rng.choice(ask).format(e=e, step=step.format(n=n)), [e, e2], [v, v2]


def _calc_turns(exprs: list[str], vals: list[int]) -> list[dict]:
    msgs = []
    for k, (e, v) in enumerate(zip(exprs, vals)):
        c = {"id": f"call_{k}", "type": "function", "function": {
            "name": "calculator", "arguments": json.dumps({"expression": e})}}
        msgs += [{"role": "assistant", "content": "", "tool_calls": [c]},
                 {"role": "tool", "tool_call_id": c["id"], "name": "calculator", "content": str(v)}]
    return msgs


def chain_rows(n: int, rng: random.Random, exclude: set[str] = frozenset()) -> list[dict]:
    """`n` rows: two-call chains, one in three followed by its frame's one-call twin on the same first
    expression."""
    out: list[dict] = []
    while len(out) < n:
        two, one = rng.choice(_CHAIN_TRAIN)
        lang = "zh" if _CJK.search(two) else "en"
        q, exprs, vals = chain_task(rng, [two], _CHAIN_TRAIN_STEP[lang])
        if exprs[0] in exclude:
            continue
        i = len(out)
        out.append({"id": f"toolmix-chain-{i}", "kind": "chain", "tools": AGENT_TOOLS, "messages": [
            {"role": "user", "content": q}, *_calc_turns(exprs, vals),
            {"role": "assistant", "content": _answer(vals[1], lang)}]})
        if i % 3 == 1 and len(out) < n:
            out.append({"id": f"toolmix-chain-one-{i}", "kind": "chain", "tools": AGENT_TOOLS, "messages": [
                {"role": "user", "content": one.format(e=exprs[0])}, *_calc_turns(exprs[:1], vals[:1]),
                {"role": "assistant", "content": _answer(vals[0], lang)}]})
    return out


def _text_task(rng: random.Random, exclude: set[str]) -> tuple[str, str, list[tuple[str, str, str]]]:
    """One question for the text styles: (question, kind, steps [(tool, argument, result)]) where the last
    result is the answer. Arithmetic and chained questions use the calculator; python questions the python tool."""
    from actors.data.synthetic import TRAIN_QUESTIONS, make_expression

    kind = rng.choice(["arith", "arith", "chain", "python"])
    if kind == "arith":
        e, v = make_expression(rng)
        while e in exclude:
            e, v = make_expression(rng)
        return rng.choice(TRAIN_QUESTIONS).format(e=e), kind, [("calculator", e, str(v))]
    if kind == "chain":
        q, exprs, vals = chain_task(rng, _CHAIN_ASK)
        return q, kind, [("calculator", e, str(v)) for e, v in zip(exprs, vals)]
    q, code, value = _python_task(rng, "en")
    return q, kind, [("python", code, value)]


def code_rows(n: int, rng: random.Random, exclude: set[str]) -> list[dict]:
    """The code agent's format: one ```python block; tools are functions returning text, final_answer ends it."""
    out = []
    for i in range(n):
        q, kind, steps = _text_task(rng, exclude)
        tools = rng.choice([TOOLS, AGENT_TOOLS])
        if kind == "python":
            code = f"final_answer({steps[0][1]})"
        elif kind == "arith":
            code = f"final_answer(calculator({json.dumps(steps[0][1])}))"
        else:
            first, second = steps[0][1], steps[1][1]
            rest = second[len(steps[0][2]):]   # " * 19" of "1285 * 19"
            code = f"x = calculator({json.dumps(first)})\nfinal_answer(calculator(x + {json.dumps(rest)}))"
        reply = f"Thought: {'Python computes this directly.' if kind == 'python' else 'I use the calculator.'}\n" \
                f"```python\n{code}\n```"
        out.append({"id": f"toolmix-code-{i}", "kind": "code", "answer": steps[-1][2], "messages": [
            {"role": "system", "content": CODE_PROMPT.format(tools=code_tool_lines(tools))},
            {"role": "user", "content": q}, {"role": "assistant", "content": reply}]})
    return out


def react_rows(n: int, rng: random.Random, exclude: set[str]) -> list[dict]:
    """ReAct's format: Thought / Action / Action Input per step, Observation as the user's turn, Final Answer."""
    out = []
    for i in range(n):
        q, _, steps = _text_task(rng, exclude)
        tools = rng.choice([TOOLS, AGENT_TOOLS])
        msgs = [{"role": "system", "content": REACT_PROMPT.format(tools=react_tool_lines(tools))},
                {"role": "user", "content": q}]
        for k, (tool, arg, result) in enumerate(steps):
            thought = "I need to compute this." if k == 0 else "Now I use that result."
            args = json.dumps({"expression" if tool == "calculator" else "code": arg})
            msgs += [{"role": "assistant", "content": f"Thought: {thought}\nAction: {tool}\nAction Input: {args}"},
                     {"role": "user", "content": f"Observation: {result}"}]
        msgs.append({"role": "assistant", "content": f"Thought: I know the answer\nFinal Answer: {steps[-1][2]}"})
        out.append({"id": f"toolmix-react-{i}", "kind": "react", "answer": steps[-1][2], "messages": msgs})
    return out


_STOP = frozenset("a an and are as at be by for from has have in is it its of on or that the this to was were "
                  "what which who with his her their they he she not but also had been into than then there".split())
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORDS = re.compile(r"[A-Za-z][A-Za-z'-]+|\d+")
_RETRIEVE_ASK = ["Search the documents for {p}.", "Which document mentions {p}?",
                 "Find a passage about {p} and cite it.", "Look up {p} in the documents."]
_RETRIEVE_ASK_UNSEEN = ["What do the documents say about {p}?", "Cite the document that discusses {p}."]


def sentences(docs: list[dict]) -> list[dict]:
    """English sentences of 60-300 characters with a phrase of 4 content words: {"doc_id", "sentence", "phrase",
    "context"} (the sentence and the next one, as a passage would show it)."""
    out = []
    for d in docs:
        for line in str(d["text"]).split("\n"):
            sents = _SENTENCE.split(line.strip())
            for j, sent in enumerate(sents):
                if not 60 <= len(sent) <= 300 or _CJK.search(sent):
                    continue
                words = [w for w in _WORDS.findall(sent) if w.lower() not in _STOP and len(w) > 2]
                if len(words) < 6:
                    continue
                k = (len(sent) * 7 + j) % (len(words) - 3)   # a fixed window: the same phrase on every run
                out.append({"doc_id": str(d["id"]), "sentence": sent, "phrase": " ".join(words[k:k + 4]),
                            "context": " ".join(sents[j:j + 2])})   # starts with it: search_docs cuts passages
    return out


def _retrieval_conversation(rid: str, s: dict, pool: list[dict], rng: random.Random, ask: list[str]) -> dict:
    draw = rng.sample(pool, min(len(pool), 8))   # distractors: other documents' passages first
    others = ([o for o in draw if o["doc_id"] != s["doc_id"]] + [o for o in draw if o["doc_id"] == s["doc_id"]
                                                                  and o["sentence"] != s["sentence"]])[:2]
    hits = [(o["doc_id"], o["context"]) for o in others]
    # first more often than not, as a real search ranks it (hybrid recall@1 0.7 on shared documents)
    hits.insert(0 if rng.random() < 0.6 else rng.randint(0, len(hits)), (s["doc_id"], s["context"]))
    c = _conversation(rid, "retrieval", rng.choice(ask).format(p=s["phrase"]),
                      [{"name": "search_docs", "arguments": json.dumps({"query": s["phrase"]})}],
                      [format_passages(hits)], f"According to [{s['doc_id']}]: {s['sentence']}", AGENT_TOOLS)
    c["answer"] = s["doc_id"]
    return c


def _split_sentences(docs: list[dict], seed: int, n_held: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) sentences: `n_held` drawn first (seeded), the rest train; no phrase is in both."""
    sents = sentences(docs)
    held_idx = set(random.Random(seed + 7).sample(range(len(sents)), min(n_held, len(sents))))
    held = [sents[i] for i in sorted(held_idx)]
    phrases = {h["phrase"] for h in held}
    return [s for i, s in enumerate(sents) if i not in held_idx and s["phrase"] not in phrases], held


def retrieval_rows(n: int, docs: list[dict], rng: random.Random, seed: int, n_held: int = 0) -> list[dict]:
    train, _ = _split_sentences(docs, seed, n_held)
    if n and not train:
        raise ValueError("data.tool_mix.retrieval: no quotable sentence (60-300 characters, 6+ content words) in "
                         "the documents of data.docs_sources beside the held-out ones; name prose sources there")
    return [_retrieval_conversation(f"toolmix-retrieval-{i}", s, train, rng, _RETRIEVE_ASK)
            for i, s in enumerate(rng.sample(train, min(n, len(train))))]


def heldout(counts: dict[str, int], docs: list[dict], seed: int) -> list[dict]:
    """The agent's held-out python and retrieval questions (`counts`: python, retrieval), each a record
    {"id", "kind", "lang", "phrasing", "messages" (the user turn first), "answer"}: the number, or the doc id
    the answer must cite. Python questions are drawn before any training row (compose excludes them)."""
    rng = random.Random(seed + 1)
    out = []
    for i in range(counts.get("python", 0)):
        lang = "zh" if i % 4 == 3 else "en"
        q, code, value = _python_task(rng, lang)
        out.append({"id": f"python-heldout-{i}", "kind": "python", "lang": lang, "phrasing": "seen",
                    "messages": [{"role": "user", "content": q}], "answer": value, "code": code})
    _, held = _split_sentences(docs, seed, counts.get("retrieval", 0))
    for i, s in enumerate(held):
        unseen = i % 2 == 1
        q = rng.choice(_RETRIEVE_ASK_UNSEEN if unseen else _RETRIEVE_ASK).format(p=s["phrase"])
        out.append({"id": f"retrieval-heldout-{i}", "kind": "retrieval", "lang": "en",
                    "phrasing": "unseen" if unseen else "seen", "messages": [{"role": "user", "content": q}],
                    "answer": s["doc_id"], "phrase": s["phrase"]})
    return out


def compose(records: list[dict], counts: dict[str, int], seed: int = 0,
            exclude_expressions: set[str] | None = None, docs: list[dict] | None = None,
            heldout_counts: dict[str, int] | None = None) -> list[dict]:
    """`counts` per kind (KINDS) -> conversation records; `docs` ({"id", "text"}) feed retrieval rows;
    the questions of `heldout(heldout_counts, docs, seed)` are kept out."""
    rng = random.Random(seed)
    ex = single_calls(records)
    api = apisynth.exchanges(counts.get("api_calls", 0), rng)
    ex += api
    held_q = {r["messages"][0]["content"] for r in heldout(heldout_counts or {}, docs or [], seed)}
    out = [_conversation(f"toolmix-simple-{i}", "simple", e["user"], [e["call"]], None, "", e["tools"])
           for i, e in enumerate(rng.sample(api, min(len(api), counts.get("simple", 0))))]
    out += multiple(ex, counts.get("multiple", 0), rng)
    n_par = counts.get("parallel", 0)
    # a third each with api_calls (otherwise halves): several values of one argument in one request, several
    # whole argument sets in one request (apisynth), two requests joined by "Also,"
    n_sets = n_par // 3 if api else 0
    out += [_conversation(f"toolmix-parallel-sets-{i}", "parallel", u, calls, None, "", tools)
            for i, (u, calls, tools) in enumerate(apisynth.parallel_clauses(n_sets, rng))]
    inline = parallel_inline(ex, (n_par - n_sets) - (n_par - n_sets) // 2, rng)
    out += inline + parallel(ex, n_par - n_sets - len(inline), rng, same=True)
    n_pm = counts.get("parallel_multiple", 0)
    n_multi = n_pm // 3 if api else 0   # a third: 2-3 functions of a domain, one asked for several argument sets
    out += [_conversation(f"toolmix-parallel_multiple-sets-{i}", "parallel_multiple", u, calls, None, "", tools)
            for i, (u, calls, tools) in enumerate(apisynth.multi_requests(n_multi, rng))]
    out += parallel(ex, n_pm - n_multi, rng, same=False)
    n_irr = counts.get("irrelevance", 0)
    out += irrelevance(ex, n_irr, rng, apisynth.near_misses(n_irr // 2, rng) if api else [])
    out = [namespaced(c, rng) if rng.random() < 0.4 else c for c in out]   # dotted names in 2 of 5
    out += parallel_arith(counts.get("parallel_arith", 0), rng, exclude_expressions or set())
    out += chain_rows(counts.get("chain", 0), rng, exclude_expressions or set())
    out += python_rows(counts.get("python", 0), rng, held_q)
    n_held = (heldout_counts or {}).get("retrieval", 0)
    out += retrieval_rows(counts.get("retrieval", 0), docs or [], rng, seed, n_held)
    out += code_rows(counts.get("code", 0), rng, exclude_expressions or set())
    out += react_rows(counts.get("react", 0), rng, exclude_expressions or set())
    rng.shuffle(out)
    return out


KINDS = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "parallel_arith", "chain", "python", "retrieval",
         "code", "react")
