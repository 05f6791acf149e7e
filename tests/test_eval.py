"""Eval stage: lm-eval definitions, backend scoring against a manual log-softmax, batched generation, the
arith_tool turn through the shared contract, and run_eval through real EvalWorker actors on two tiny random
checkpoints."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from actors.common.config import ConfigError
from actors.eval.backend import LocalModelBackend, LoglikelihoodRequest, RollingRequest
from actors.eval.config import EvalConfig
from actors.eval.metrics import aggregate_mean, multiple_choice_metrics
from actors.eval.runner import evaluate, run_eval
from actors.eval.tasks import arc_doc, build_tasks, score_record, tool_turn
from actors.model.chat import render_chat
from actors.tooltask import last_number


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_root):
    """Tokenizer trained on ~200 KB of tinyshakespeare + synthetic chats; two random tiny checkpoints."""
    from actors.data.synthetic import generate, write_jsonl
    from actors.model.config import ModelConfig
    from actors.model.hf import save_hf
    from actors.model.tokenizer import load_tokenizer, train_tokenizer
    from actors.model.transformer import Transformer

    root = tmp_path_factory.mktemp("eval")
    text = (data_root / "tinyshakespeare" / "input.txt").read_text()[:200_000]
    _, heldout = generate(0, 3, seed=0)
    chats = [json.dumps(r, ensure_ascii=False) for r in generate(50, 0, seed=1)[0]]
    tok_dir = train_tokenizer([text[i:i + 2000] for i in range(0, len(text), 2000)] + chats, 512,
                              root / "tok")
    tok = load_tokenizer(tok_dir)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    ckpts = {}
    for label, seed in (("pretrain", 0), ("finetune", 1)):
        torch.manual_seed(seed)
        cfg = ModelConfig(name=label, vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, eos_token_id=eos, pad_token_id=eos)
        ckpts[label] = str(save_hf(Transformer(cfg), root / label, tokenizer_dir=tok_dir))
    # packed validation rows: fixed length 65, as the data stage writes them
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = tok.encode(text[100_000:120_000], add_special_tokens=False)
    rows = [ids[i:i + 65] for i in range(0, 65 * 8, 65)]
    (root / "val").mkdir()
    pq.write_table(pa.table({"input_ids": rows[:5]}), root / "val" / "val-00000.parquet")
    pq.write_table(pa.table({"input_ids": rows[5:]}), root / "val" / "val-00001.parquet")
    arith = write_jsonl(heldout, root / "arith_heldout.jsonl")
    return {"root": root, "ckpts": ckpts, "tok": tok, "rows": rows, "val": root / "val", "arith": arith,
            "heldout": heldout}


# (a) hand-checked acc / acc_norm ---------------------------------------------------------------------------
def test_acc_norm_hand_checked():
    # choices "a" (1 char) and "bbb" (3 chars), loglikelihoods -2.0 and -5.9, gold = 1.
    #   acc:      argmax(-2.0, -5.9) = 0                       -> 0
    #   acc_norm: argmax(-2.0/1, -5.9/3 = -1.967) = 1          -> 1
    #   (had the length counted the leading " ": -2.0/2 = -1.0 > -5.9/4 = -1.475 -> 0: so this pins lm-eval's
    #    len(choice) WITHOUT the target delimiter)
    assert multiple_choice_metrics([-2.0, -5.9], ["a", "bbb"], gold=1) == {"acc": 0.0, "acc_norm": 1.0}
    # characters, not bytes: "éé" is 2 characters, 4 UTF-8 bytes.
    #   chars: -2.1/2 = -1.05 < -3.0/3 = -1.0 -> 1;   bytes: -2.1/4 = -0.525 > -1.0 -> 0
    assert multiple_choice_metrics([-2.1, -3.0], ["éé", "abc"], gold=1) == {"acc": 0.0, "acc_norm": 1.0}
    # both agree on the gold: acc = acc_norm = 1
    assert multiple_choice_metrics([-1.0, -9.0], ["x", "yyyy"], gold=0) == {"acc": 1.0, "acc_norm": 1.0}
    agg = aggregate_mean([{"acc": 0.0, "acc_norm": 1.0}, {"acc": 1.0, "acc_norm": 1.0}], ["acc", "acc_norm"])
    # acc mean 0.5, sample std sqrt(0.5) -> stderr sqrt(0.5)/sqrt(2) = 0.5; acc_norm constant -> stderr 0
    assert agg == {"acc": 0.5, "acc_stderr": 0.5, "acc_norm": 1.0, "acc_norm_stderr": 0.0}


# (b) ARC formatting = lm-eval strings ----------------------------------------------------------------------
def test_arc_doc_matches_lm_eval(data_root):
    task, = build_tasks(["arc_easy"], EvalConfig(tasks=["arc_easy"], limit=2), data_root)
    docs = task.docs()
    assert len(docs) == 2
    d = docs[0]
    assert task.context(d) == ("Question: Which statement best explains why photosynthesis is the foundation of "
                               "most food webs?\nAnswer:")
    reqs = task.requests(d)
    assert [r.context for r in reqs] == [task.context(d)] * 4
    assert [r.continuation for r in reqs] == [
        " Sunlight is the source of energy for nearly all ecosystems.",
        " Most ecosystems are found on land instead of in water.",
        " Carbon dioxide is more available than other gases.",
        " The producers in all ecosystems are plants."]
    assert d["_target"] == 0 and docs[1]["_target"] == 1  # answerKey A, B
    # numeric labels (some ARC rows) and the HF schema: gold = index of answerKey among labels
    hf = {"id": "x", "question": "Q?", "choices": {"text": ["p", "q", "r"], "label": ["1", "2", "3"]},
          "answerKey": "3"}
    assert arc_doc(hf) == {"id": "x", "query": "Question: Q?\nAnswer:", "choices": ["p", "q", "r"], "gold": 2}


# (c) backend loglikelihood = manual log-softmax; batched = unbatched ---------------------------------------
def test_backend_loglikelihood_matches_manual(tiny):
    ckpt = tiny["ckpts"]["pretrain"]
    # fp32, the parity reference (auto is bf16 on a CPU with native bf16)
    b1 = LocalModelBackend(ckpt, device="cpu", dtype="float32", batch_size=1, progress=False)
    b4 = LocalModelBackend(ckpt, device="cpu", dtype="float32", batch_size=4, progress=False)
    tok, model = b1.tokenizer, b1.model
    reqs = [LoglikelihoodRequest("Question: Who loves Juliet?\nAnswer:", " Romeo"),
            LoglikelihoodRequest("Question: Who loves Juliet?\nAnswer:", " the prince of Verona"),
            LoglikelihoodRequest("First Citizen:\nBefore we proceed any further, hear me", " speak."),
            LoglikelihoodRequest("To be, or not ", "to be"),  # trailing space moves to the continuation
            LoglikelihoodRequest("", "O Romeo, Romeo"),          # empty context: EOS is the context
            LoglikelihoodRequest("a", " b c d e f g h i j k l m n o p")]
    got1, got4 = b1.loglikelihood(reqs), b4.loglikelihood(reqs)
    for req, (ll1, g1), (ll4, g4) in zip(reqs, got1, got4):
        ctx, cont = req.context, req.continuation
        n_sp = len(ctx) - len(ctx.rstrip())
        if n_sp:
            ctx, cont = ctx[:-n_sp], ctx[-n_sp:] + cont
        whole = tok.encode(ctx + cont, add_special_tokens=False)
        c = [b1.eos_id] if ctx == "" else tok.encode(ctx, add_special_tokens=False)
        cont_ids = whole[len(c):] if ctx else whole
        ids = torch.tensor([c + cont_ids])
        with torch.no_grad():
            lp = F.log_softmax(model(ids)[0].float(), dim=-1)
        pos = range(len(c) - 1, len(c) + len(cont_ids) - 1)  # logits at t predict token t+1
        manual = sum(lp[p, t].item() for p, t in zip(pos, cont_ids))
        greedy = all(lp[p].argmax().item() == t for p, t in zip(pos, cont_ids))
        assert ll1 == pytest.approx(manual, abs=1e-4)
        assert ll4 == pytest.approx(ll1, abs=1e-4)
        assert g1 == greedy and g4 == g1
    # the pair split is exactly lm-eval's: the space is scored as part of the continuation
    assert b1.encode_pair("To be, or not ", "to be") == (tok.encode("To be, or not", add_special_tokens=False),
                                                         tok.encode("To be, or not to be", add_special_tokens=False)
                                                         [len(tok.encode("To be, or not", add_special_tokens=False)):])


def test_rolling_over_token_ids(tiny):
    b = LocalModelBackend(tiny["ckpts"]["pretrain"], device="cpu", batch_size=3, progress=False)
    row = tiny["rows"][0]
    (ll, n), = b.loglikelihood_rolling([RollingRequest(token_ids=row)])
    with torch.no_grad():
        lp = F.log_softmax(b.model(torch.tensor([row]))[0].float(), dim=-1)
    assert n == len(row) - 1
    assert ll == pytest.approx(sum(lp[t, row[t + 1]].item() for t in range(len(row) - 1)), abs=1e-3)
    # windows no longer than the position limit cover every scored token exactly once
    b.max_length = 16
    wins = b.rolling_windows(row, prefix=False)
    assert all(len(w) <= 17 for w, _ in wins) and sum(k for _, k in wins) == len(row) - 1
    assert [w[-k:] for w, k in wins] == [row[1:][i:i + 16] for i in range(0, len(row) - 1, 16)]
    (ll_w, n_w), = b.loglikelihood_rolling([RollingRequest(token_ids=row)])
    manual = 0.0
    for w, k in wins:  # each window scored on its own (shorter) context
        with torch.no_grad():
            lpw = F.log_softmax(b.model(torch.tensor([w[:-1]]))[0].float(), dim=-1)
        manual += sum(lpw[p, w[p + 1]].item() for p in range(len(w) - 1 - k, len(w) - 1))
    assert n_w == n and ll_w == pytest.approx(manual, abs=1e-3)


def test_generate_matches_uncached_greedy(tiny):
    from actors.eval.backend import GenerateRequest

    b = LocalModelBackend(tiny["ckpts"]["finetune"], device="cpu", progress=False)
    prompt = "ROMEO:\nBut soft, what light"
    ids = b.tok_encode(prompt)
    manual = []
    with torch.no_grad():  # greedy without a KV cache: the whole sequence every step
        for _ in range(10):
            nxt = int(b.model(torch.tensor([ids + manual]))[0, -1].argmax())
            if nxt in b.stop_ids:
                break
            manual.append(nxt)
    text = b.tokenizer.decode(manual, skip_special_tokens=True)
    assert b.generate([GenerateRequest(prompt=prompt, max_new_tokens=10)]) == [text]
    if len(text.strip()) >= 2:  # a stop string ends generation and is cut from the output
        stop = text.strip()[1:3]
        got, = b.generate([GenerateRequest(prompt=prompt, max_new_tokens=10, stop=[stop])])
        assert got == text.split(stop)[0]
    # chat messages are rendered with the template and a generation prompt
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    assert b.render(GenerateRequest(messages=msgs)).endswith("<|im_start|>assistant\n")
    # a left-padded batch of prompts of different lengths and budgets gives each prompt's own greedy text
    prompts = [prompt, "KING:", "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:", "O"]
    reqs = [GenerateRequest(prompt=p, max_new_tokens=n) for p, n in zip(prompts, (10, 3, 12, 7))]
    b3 = LocalModelBackend(tiny["ckpts"]["finetune"], device="cpu", progress=False, max_num_seqs=3)
    assert b3.generate(reqs) == [b.generate([r])[0] for r in reqs]


# (d) the arith_tool turn (tool results from the agent's own evaluator: actors.tooltask) -----------------
def test_arith_tool_turn_and_scoring(tiny):
    rec = tiny["heldout"][0]
    expr, ans = rec["expression"], rec["answer"]
    turn1 = f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expr.replace(" ", "")}"}}}}</tool_call>'
    st = tool_turn(rec, turn1, call_id=rec["messages"][1]["tool_calls"][0]["id"])
    assert st["tool_result"] == ans and st["call"]["name"] == "calculator"
    # the turn we append renders exactly like the training record's own tool-call + tool turns
    tok = tiny["tok"]
    same = [dict(m) for m in rec["messages"][:3]]
    same[1]["tool_calls"] = [{**same[1]["tool_calls"][0], "function": {
        "name": "calculator", "arguments": json.dumps({"expression": expr.replace(" ", "")})}}]
    assert (render_chat(tok, st["messages"], rec["tools"], add_generation_prompt=False)
            == render_chat(tok, same, rec["tools"], add_generation_prompt=False))
    st["final"] = f"The answer is {ans}."
    assert score_record(rec, st) == {"exact_match": 1.0, "valid_tool_call_rate": 1.0, "expression_match": 1.0}
    bad = tool_turn(rec, '<tool_call>{"name": "search", "arguments": {"q": "1"}}</tool_call> 12')
    assert bad["call"] is None and score_record(rec, bad)["valid_tool_call_rate"] == 0.0
    assert last_number("答案是 -1,234。") == "-1234" and last_number("no digits") is None
    # the python tool accepts max()/round() as the agent's does; the calculator refuses calls
    py = tool_turn(rec, '<tool_call>{"name": "python", "arguments": {"code": "max(2, 1/3)"}}</tool_call>')
    assert py["tool_result"] == "2"
    calc = tool_turn(rec, '<tool_call>{"name": "calculator", "arguments": {"expression": "max(2, 3)"}}</tool_call>')
    assert calc["tool_result"].startswith("error: function calls are not allowed")
    third = tool_turn(rec, '<tool_call>{"name": "calculator", "arguments": {"expression": "1/3"}}</tool_call>')
    assert third["tool_result"] == "0.333333333333"


def test_config_errors(tiny, data_root):
    with pytest.raises(ConfigError, match="unknown task 'mmlu_pro'"):
        EvalConfig(tasks=["arc_easy", "mmlu_pro"])
    with pytest.raises(ConfigError, match="eval.batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ConfigError, match="replaced by eval.limits"):
        from actors.common.config import from_dict

        from_dict(EvalConfig, {"arc_limit": 3}, prefix="eval")
    with pytest.raises(ValueError, match="--data perplexity=PATH"):
        build_tasks(["perplexity"], EvalConfig(tasks=["perplexity"]), data_root)
    with pytest.raises(FileNotFoundError, match="--data arc_easy=PATH"):
        build_tasks(["arc_easy"], EvalConfig(tasks=["arc_easy"], data={"arc_easy": "/nonexistent.jsonl"}), data_root)


# (e) run_eval through real EvalWorker actors ------------------------------------------------------------
def test_run_eval_two_checkpoints(tiny, ray_session, data_root):
    cfg = EvalConfig(tasks=["perplexity", "arc_easy", "arith_tool"], limits={"arc_easy": 4, "perplexity": 6,
                     "arith_tool": 3}, data={"perplexity": str(tiny["val"]), "arith_tool": str(tiny["arith"])},
                     gen_kwargs={"max_gen_toks": 12}, batch_size=8, num_cpus=1, device="cpu", progress=False)
    out = tiny["root"] / "eval_out"
    report = run_eval(tiny["ckpts"], cfg, out, data_root=data_root, model_cache=tiny["root"] / "models")
    saved = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert set(saved["results"]) == {"pretrain", "finetune"}
    for label in ("pretrain", "finetune"):
        r = saved["results"][label]
        assert set(r) == {"perplexity", "arc_easy", "arith_tool"}
        assert r["arc_easy"]["n"] == 4 and r["arith_tool"]["n"] == 3 and r["perplexity"]["n"] == 6
        for k in ("acc", "acc_norm"):
            assert 0.0 <= r["arc_easy"]["metrics"][k] <= 1.0
        for k in ("exact_match", "valid_tool_call_rate", "expression_match"):
            assert 0.0 <= r["arith_tool"]["metrics"][k] <= 1.0
        assert 1 <= len(r["arith_tool"]["samples"]) <= 3 and "turn1" in r["arith_tool"]["samples"][0]
        ppl = r["perplexity"]["metrics"]
        assert r["perplexity"]["metrics"]["tokens"] == 6 * 64
        assert math.isclose(ppl["perplexity"], math.exp(ppl["nll"]), rel_tol=1e-9)
        assert f"| {label}" in md.splitlines()[0] or label in md.splitlines()[0]
    # the actor's perplexity equals the training loss of the same rows computed here, in-process
    from actors.model.hf import load_hf
    from tests.helpers import causal_lm_loss

    rows = torch.tensor(tiny["rows"][:6])
    for label, ckpt in tiny["ckpts"].items():
        with torch.no_grad():
            loss = causal_lm_loss(load_hf(ckpt)(rows), rows).item()
        assert saved["results"][label]["perplexity"]["metrics"]["nll"] == pytest.approx(loss, rel=1e-4)
    # two different random inits give different numbers: each worker really loaded its own checkpoint
    assert saved["results"]["pretrain"]["perplexity"]["metrics"]["nll"] != \
        saved["results"]["finetune"]["perplexity"]["metrics"]["nll"]
    for row in ("perplexity | perplexity | 6", "arc_easy | acc | 4", "arc_easy | acc_norm | 4",
                "arith_tool | exact_match | 3", "arith_tool | valid_tool_call_rate", "arith_tool | expression_match"):
        assert f"| {row} |" in md
    for f in ("summary.md", "summary.csv", "results.png", "samples_pretrain_arc_easy.jsonl",
              "samples_finetune_arith_tool.jsonl"):
        assert (out / f).is_file(), f
    assert len((out / "samples_pretrain_arc_easy.jsonl").read_text().splitlines()) == 4
    assert report["results"]["pretrain"]["arc_easy"]["metrics"] == saved["results"]["pretrain"]["arc_easy"]["metrics"]
    # Ray-free evaluate on the same checkpoint agrees with the actor
    local = evaluate(LocalModelBackend(tiny["ckpts"]["pretrain"], device="cpu", progress=False), ["arc_easy"],
                     EvalConfig(tasks=["arc_easy"], limit=4, progress=False), data_root)
    assert local["arc_easy"]["metrics"]["acc"] == saved["results"]["pretrain"]["arc_easy"]["metrics"]["acc"]
