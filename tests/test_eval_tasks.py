"""Tasks as data without Ray: the YAML format and its errors, few-shot sampling, filters and text metrics, bad
rows quarantined, `--data` overrides, every built-in task's prompt, and scores that do not depend on the batch
size (the context a question's choices share is computed once, in a tree row)."""
from __future__ import annotations

import json

import pytest

from actors.common.config import ConfigError
from actors.eval.config import EvalConfig
from actors.eval.metrics import apply_filter, exact_match, f1_score
from actors.eval.spec import TaskRegistry, load_task_file
from actors.eval.tasks import build_tasks

BUILTIN = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "openbookqa", "mmlu", "cmmlu", "gsm8k", "bfcl_simple"]


def test_every_builtin_task_builds_on_the_shared_rows(data_root):
    reg = TaskRegistry()
    assert set(BUILTIN + ["arith_tool", "perplexity"]) <= set(reg.names())
    tasks = build_tasks(BUILTIN, EvalConfig(tasks=BUILTIN, limit=2), data_root)
    names = [t.name for t in tasks]
    assert sum(n.startswith("mmlu_") for n in names) == 57 and sum(n.startswith("cmmlu_") for n in names) == 67
    by = {t.name: t for t in tasks}
    for name in ("arc_easy", "arc_challenge", "hellaswag", "piqa", "openbookqa", "gsm8k", "bfcl_simple",
                 "mmlu_anatomy", "cmmlu_agronomy"):
        docs = by[name].docs()
        assert len(docs) == 2 and not by[name].quarantine, name
    # MMLU: the subject's description, its 5 dev rows as exemplars (first_n), then the question (lm-eval's format)
    t = by["mmlu_anatomy"]
    ctx = t.context(t.docs()[0])
    assert ctx.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert ctx.count("\nAnswer:") == 6 and ctx.endswith("\nAnswer:")
    dev = [json.loads(x) for x in (data_root / "mmlu" / "dev_all.jsonl").read_text().splitlines()]
    first = next(r for r in dev if r["subject"] == "anatomy")
    assert f"{first['question'].strip()}\nA. {first['choices'][0]}" in ctx
    assert f"Answer: {first['answer']}\n\n" in ctx  # the exemplar's gold letter
    reqs = t.requests(t.docs()[0])
    assert [r.continuation for r in reqs] == [" A", " B", " C", " D"]
    # CMMLU: the Chinese subject name and 答案：
    c = by["cmmlu_agronomy"]
    cctx = c.context(c.docs()[0])
    assert cctx.startswith("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n") and cctx.endswith("\n答案：")
    # GSM8K: 5 worked train answers as exemplars, generation until the next "Question:"
    g = by["gsm8k"]
    greq, = g.requests(g.docs()[0])
    assert greq.prompt.count("Question: ") == 6 and greq.prompt.count("#### ") == 5
    assert "Question:" in greq.stop and greq.max_new_tokens == 256
    # per-subject limit: 2 rows of each of the 57 subjects
    assert sum(len(by[n].docs()) for n in names if n.startswith("mmlu_")) == 114


def test_gsm8k_filters_and_exact_match_as_lm_eval():
    strict = [{"function": "regex", "pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}]
    flexible = [{"function": "regex", "group_select": -1, "pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"}]
    out = "She sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18"
    assert apply_filter(strict, out) == "18" and apply_filter(flexible, out) == "18"
    assert apply_filter(strict, "The answer is 18.") == "[invalid]"
    assert apply_filter(flexible, "so 1,234 dollars") == "1,234"
    ignore = [",", "\\$", "(?s).*#### ", "\\.$"]
    ref = "Janet sells 9 duck eggs.\n#### 1,800"
    assert exact_match("1,800", ref, ignore_case=True, regexes_to_ignore=ignore) == 1.0
    assert exact_match("$1800.", ref, ignore_case=True, regexes_to_ignore=ignore) == 1.0
    assert exact_match("180", ref, ignore_case=True, regexes_to_ignore=ignore) == 0.0
    assert apply_filter([{"function": "last_number"}], "first 3 then -42.5") == "-42.5"
    assert apply_filter([{"function": "choice_letter"}], "I think (B) is right") == "B"
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))


def _write_task(tmp_path, text: str, name: str = "t.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bad_task_files_name_the_field(tmp_path):
    cases = {
        "task: x\ndataset: {test: a.jsonl}\noutput_type: multiple_choise\ndoc_to_text: q\ndoc_to_target: g\n": "output_type",
        "task: x\ndataset: {dev: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\ndoc_to_choice: c\n": "dataset",
        "task: x\ndataset: {test: a.jsonl}\ndoc_to_target: g\ndoc_to_choice: c\n": "doc_to_text",
        "task: x\ndataset: {test: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\n": "doc_to_choice",
        "task: x\ndataset: {test: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\ndoc_to_choice: c\nnum_fewshot: 3\n":
            "fewshot_split",
        "task: x\ndataset: {test: a.jsonl}\ndoc_to_text: \"{{q\"\ndoc_to_target: g\ndoc_to_choice: c\n": "Jinja2",
        "task: x\ndataset: {test: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\ndoc_to_choice: c\nmetrics: [bleu]\n":
            "metrics",
        "task: x\ndataset: {test: a.jsonl}\noutput_type: generate_until\ndoc_to_text: q\ndoc_to_target: g\n"
        "filters: [{name: f, steps: [{function: regx}]}]\n": "function",
        "task: x\ndataset: {test: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\ndoc_to_choice: c\ndoc_to_txt: q\n":
            "did you mean 'doc_to_text'",
        "task: x\ndataset: {test: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\ndoc_to_choice: c\nprocess_docs: nope\n":
            "process_docs",
    }
    for text, says in cases.items():
        with pytest.raises(ConfigError, match=says) as e:
            load_task_file(_write_task(tmp_path, text))
        assert "t.yaml" in str(e.value)
    with pytest.raises(ConfigError, match="unknown task 'arc_easyy'.*did you mean"):
        EvalConfig(tasks=["arc_easyy"])


def test_yaml_task_from_a_user_folder_quarantines_bad_rows_and_samples_fewshot(tmp_path, debug_smollm2):
    from actors.eval.backend import LocalModelBackend
    from actors.eval.runner import run_tasks

    rows = [{"q": f"What is {i} + {i}?", "opts": [str(2 * i), str(2 * i + 1), str(i)], "gold": 0} for i in range(12)]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")                                        # unreadable line
    lines.insert(6, json.dumps({"q": "missing options", "gold": 0}))    # template error
    lines.insert(8, json.dumps({"q": "x", "opts": ["a"], "gold": 4}))   # gold out of range
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "shots.csv").write_text("q,opts,gold\n" + "".join(
        f"\"Shot {i}?\",\"['{i}', 'x']\",0\n" for i in range(6)))
    folder = tmp_path / "tasks"
    folder.mkdir()
    _write_task(folder, f"""task: my_add
dataset: {{test: {tmp_path / 'data.jsonl'}, train: {tmp_path / 'shots.csv'}}}
fewshot_split: train
num_fewshot: 2
fewshot_sampler: random
fewshot_seed: 7
output_type: multiple_choice
description: "Arithmetic.\\n\\n"
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_choice: opts
doc_to_target: gold
""", "my_add.yaml")
    # the CSV's opts is a string: the loader's literal list becomes the choices through the template
    (folder / "my_add.yaml").write_text((folder / "my_add.yaml").read_text().replace("doc_to_choice: opts",
                                        "doc_to_choice: \"{{opts if opts is string else opts | list}}\""))
    cfg = EvalConfig(tasks=["my_add"], include_paths=[str(folder)])
    task, = build_tasks(["my_add"], cfg)
    docs = task.docs()
    assert len(docs) == 12 and len(task.quarantine) == 3
    reasons = sorted(q["reason"].split(":")[0] for q in task.quarantine)
    assert reasons == ["bad_json", "template", "template"] and {q["row"] for q in task.quarantine} == {3, 6, 8}
    # random exemplars: seeded per doc, the same whatever else is evaluated, different across docs
    ctx0 = task.context(docs[0])
    assert ctx0.startswith("Arithmetic.\n\nQ: Shot ") and ctx0.count("Q: ") == 3 and ctx0.endswith("Q: What is 0 + 0?\nA:")
    again, = build_tasks(["my_add"], cfg)
    assert again.context(again.docs()[0]) == ctx0
    assert len({task.context(d).split("Q: What")[0] for d in docs}) > 1
    res = run_tasks(LocalModelBackend(debug_smollm2, device="cpu", progress=False), [task])["my_add"]
    assert res["n"] == 12 and res["quarantined"] == 3 and 0 <= res["metrics"]["acc"] <= 1
    # --data points the same task at another file of the same format
    (tmp_path / "other.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:5]) + "\n")
    other, = build_tasks(["my_add"], EvalConfig(tasks=["my_add"], include_paths=[str(folder)],
                                                data={"my_add": str(tmp_path / "other.jsonl")}))
    assert len(other.docs()) == 5 and not other.quarantine


def test_bad_fewshot_rows_are_quarantined_and_a_group_counts_each_bad_row_once(tmp_path):
    """Exemplar rows that cannot be used are left out of the pool and counted in `quarantined`; in a split_by
    group a bad row is counted by its own subject's subtask, and a row naming no subject by one subtask only."""
    from actors.eval.runner import run_tasks

    test = [{"subj": s, "q": f"{s} question {i}?", "opts": ["a", "b"], "gold": 0} for s in ("x", "y") for i in range(2)]
    shots = [{"subj": s, "q": f"{s} shot {i}?", "opts": ["a", "b"], "gold": 0} for s in ("x", "y") for i in range(3)]
    shots.insert(1, {"subj": "x", "q": "no options here", "gold": 0})      # template error, subject x
    shots.insert(4, "{not json")                                            # names no subject
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in test) + "\n")
    (tmp_path / "shots.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in shots) + "\n")
    folder = tmp_path / "tasks"
    folder.mkdir()
    _write_task(folder, f"""task: grp
dataset: {{test: {tmp_path / 'test.jsonl'}, dev: {tmp_path / 'shots.jsonl'}}}
fewshot_split: dev
num_fewshot: 3
fewshot_match: subj
split_by: subj
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: opts
doc_to_target: gold
""", "grp.yaml")
    tasks = build_tasks(["grp"], EvalConfig(tasks=["grp"], include_paths=[str(folder)]))
    by = {t.name: t for t in tasks}
    assert set(by) == {"grp_x", "grp_y"}
    for t in tasks:
        assert len(t.docs()) == 2
    qx = sorted((q["split"], q["reason"].split(":")[0]) for q in by["grp_x"].quarantine)
    assert qx == [("dev", "bad_json"), ("dev", "template")]
    assert by["grp_y"].quarantine == []
    x0 = by["grp_x"].docs()[0]
    assert [e["q"] for e in by["grp_x"].exemplars(x0)] == ["x shot 0?", "x shot 1?", "x shot 2?"]

    class Const:  # every choice scores the same: the counts, not the scores, are under test
        def loglikelihood(self, reqs):
            return [(-1.0, False) for _ in reqs]

    res = run_tasks(Const(), tasks)
    assert res["grp_x"]["quarantined"] == 2 and res["grp_y"]["quarantined"] == 0 and res["grp"]["quarantined"] == 2


def test_batch_size_does_not_change_predictions_or_loglikelihoods(debug_smollm2, data_root):
    """Batch 1 vs 32: the same tree rows, only the padding differs (MMLU's 5-shot prompts run past the debug
    model's 256 positions, so the truncated single-row path is covered too)."""
    from actors.eval.backend import LocalModelBackend
    from actors.eval.runner import run_tasks

    names = ["arc_easy", "hellaswag", "piqa", "mmlu_anatomy", "mmlu_astronomy"]
    cfg = EvalConfig(tasks=names, limit=12)
    runs = []
    for bs in (1, 32):
        # fp32, the parity reference (auto is bf16 on a CPU with native bf16)
        backend = LocalModelBackend(debug_smollm2, device="cpu", dtype="float32", batch_size=bs, progress=False)
        runs.append(run_tasks(backend, build_tasks(names, cfg, data_root)))
    worst = 0.0
    for name in names:
        a, b = runs[0][name]["samples"], runs[1][name]["samples"]
        assert len(a) == len(b) == runs[0][name]["n"] > 0
        for sa, sb in zip(a, b):
            assert (sa["acc"], sa.get("acc_norm")) == (sb["acc"], sb.get("acc_norm")), name
            worst = max(worst, max(abs(x[0] - y[0]) for x, y in zip(sa["resps"], sb["resps"])))
    assert worst <= 1e-5, worst


def test_chat_template_and_fewshot_as_multiturn(debug_smollm2, data_root):
    from actors.eval.backend import LocalModelBackend
    from actors.eval.runner import run_tasks

    cfg = EvalConfig(tasks=["mmlu_anatomy"], limit=2, apply_chat_template=True, fewshot_as_multiturn=True)
    task, = build_tasks(["mmlu_anatomy"], cfg, data_root)
    msgs = task.context(task.docs()[0])
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 5 + ["user"]
    assert msgs[0]["content"].startswith("The following are multiple choice questions") and msgs[2]["content"] in "ABCD"
    backend = LocalModelBackend(debug_smollm2, device="cpu", progress=False)
    assert backend.context_text(msgs).endswith("<|im_start|>assistant\n")
    res = run_tasks(backend, [task])["mmlu_anatomy"]
    assert res["n"] == 2 and res["config"]["apply_chat_template"] and res["config"]["fewshot_as_multiturn"]
    with pytest.raises(ConfigError, match="needs apply_chat_template"):
        EvalConfig(tasks=["mmlu"], fewshot_as_multiturn=True)


def test_stem_groups_share_a_prefix_only_when_it_pays_and_rows_pack_first_fit():
    from actors.eval.backend import pack_rows, stem_groups

    cost = lambda T: T * (3_540_000 + 2 * T * 576)  # noqa: E731  SmolLM2's per-layer multiply-adds
    shots = list(range(1000, 1550))                  # a 550-token few-shot prompt
    mmlu = [shots + [7, i, 8] for i in range(5)]     # 5 questions after it
    groups = stem_groups(mmlu, [3] * 5, 64, 4096, cost)
    assert groups == [(551, [0, 1, 2, 3, 4])]        # the exemplars once: 551 + 5 x 5 tokens instead of 5 x 556
    long = [list(range(64)) + [i] * 500 for i in range(2, 7)]  # 64 shared tokens before 500-token remainders
    assert len(stem_groups(long, [3] * 5, 64, 4096, cost)) == 5  # one 2564-token row costs more than five
    assert len(stem_groups(mmlu, [3] * 5, 600, 4096, cost)) == 5  # below min_shared: no sharing
    assert [len(m) for _, m in stem_groups(mmlu, [3] * 5, 64, 570, cost)] == [3, 2]  # the row cap: 551 + 3 x 5
    # first fit: short rows fill the room a long one left; a long batch gets fewer rows
    batches = pack_rows([100, 60, 50, 40, 10], 2)
    assert batches == [[(100, [(0, 0)]), (100, [(1, 0), (3, 60)])], [(50, [(2, 0)]), (10, [(4, 0)])]]
    assert [len(b) for b in pack_rows([3000, 3000, 3000, 10], 16, 16 * 512)] == [2, 2]
