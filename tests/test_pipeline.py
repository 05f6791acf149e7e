"""The whole chain on the tiny config: manifest hand-offs, resume, HF interop of the fine-tuned export.

`tiny_run` (conftest, one per session) is built once and only read: a test that runs stages again works on its own copy of the run dir
(fingerprints do not depend on the path), so the tests pass in any order or alone."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import REPO

pytestmark = [pytest.mark.ray, pytest.mark.e2e]
STAGES = ["data", "pretrain", "finetune", "evaluate", "serve", "agent"]


def _manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def _copy(run_dir, tmp_path):
    """A private copy of the run dir for a test that re-runs stages (its outputs land in the copy)."""
    return shutil.copytree(run_dir, tmp_path / run_dir.name, symlinks=True)


def test_every_stage_completes_and_hands_off(tiny_run):
    m = _manifest(tiny_run)
    assert [s for s in STAGES if m["stages"][s]["status"] == "complete"] == STAGES
    st = m["stages"]
    d = st["data"]["metrics"]
    assert d["read"] == d["kept"] + sum(d["dropped"].values()) + sum(d["quarantined"].values())
    # each stage's inputs are the previous stage's recorded outputs
    assert st["finetune"]["config"]["method"] == "lora"
    assert json.loads((tiny_run / "finetune" / "hf" / "fullchain.json").read_text())["lineage"][0]["hf"] == \
        st["pretrain"]["outputs"]["hf"]
    results = json.loads((tiny_run / "evaluate" / "results.json").read_text())
    assert set(results["results"]) == {"pretrain", "finetune"}
    for label in ("pretrain", "finetune"):
        assert {"perplexity", "arc_easy", "arith_tool"} <= set(results["results"][label])
    assert st["pretrain"]["metrics"]["world_size"] == 2
    assert (tiny_run / "pretrain" / "loss.png").exists() and (tiny_run / "pretrain" / "metrics.jsonl").exists()
    assert st["serve"]["outputs"]["base_url"].startswith("http://127.0.0.1:")
    assert st["serve"]["outputs"]["demo_chat"]["response"]["finish_reason"] in ("stop", "length", "tool_calls")
    assert st["agent"]["metrics"]["n"] == 2
    summary = (tiny_run / "summary.md").read_text()
    for section in ("## Stages", "## Pretrain", "## Evaluation", "## Served chat completion", "## Agent"):
        assert section in summary
    head = json.loads((tiny_run / "summary.json").read_text())["headline"]
    assert head["finetune_base"] == "pretrain" and head["agent_n"] == 2 and head["arith_tool_n"] == 4
    assert head["pretrain_val_over_unigram"] == st["pretrain"]["metrics"]["val_vs_unigram"]
    assert head["arith_tool_em_finetuned"] == results["results"]["finetune"]["arith_tool"]["metrics"]["exact_match"]
    assert head["arc_easy_acc_norm_base"] == results["results"]["pretrain"]["arc_easy"]["metrics"]["acc_norm"]
    assert set(head) >= {"pipeline_s", "arith_tool_em_base", "agent_accuracy", "agent_accuracy_unseen_phrasing",
                         "arc_easy_acc_norm_finetuned", "bfcl_simple_base", "bfcl_simple_finetuned",
                         "demo_tool_call_expression", "agent_demo_answer"}


def test_rerun_skips_completed_stages(tiny_run, tmp_path, capsys):
    from jobs.config import load_config
    from jobs.runner import run_stages

    run = _copy(tiny_run, tmp_path)
    before = _manifest(run)
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"))
    run_stages(cfg, run)
    out = capsys.readouterr().out
    after = _manifest(run)
    for s in STAGES:
        assert f"== {s}: complete, skipped" in out
        assert after["stages"][s]["started"] == before["stages"][s]["started"]
    # nothing ran: the pipeline keeps the time that produced these results (jobs.pipeline)
    assert after["last_invocation"] == {"ran": [], "skipped": STAGES}


def test_changed_section_reruns_only_that_stage(tiny_run, tmp_path, capsys):
    from jobs.config import load_config
    from jobs.runner import run_stages

    run = _copy(tiny_run, tmp_path)
    before = _manifest(run)
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), ["eval.limits.arc_easy=4"])
    run_stages(cfg, run)
    out = capsys.readouterr().out
    after = _manifest(run)
    assert "== evaluate: running" in out
    assert after["last_invocation"]["ran"] == ["evaluate"]
    for s in ("data", "pretrain", "finetune", "serve", "agent"):
        assert after["stages"][s]["started"] == before["stages"][s]["started"], s
    results = json.loads((run / "evaluate" / "results.json").read_text())
    assert results["results"]["finetune"]["arc_easy"]["n"] == 4
    assert json.loads((tiny_run / "evaluate" / "results.json").read_text()) != results  # the original is untouched


def test_finetuned_export_loads_in_transformers(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.model import load_hf

    hf_dir = _manifest(tiny_run)["stages"]["finetune"]["outputs"]["hf"]
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ours = load_hf(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 30? 十二加三十"}],
                                   add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
