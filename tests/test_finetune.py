"""Fine-tuning methods on the one loop (debug model, CPU): SFT full / LoRA / QLoRA, DPO, KTO, reward model;
chat templates' loss masks token by token; packing; resume; merge + export; dataset checks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actors.common.config import from_dict
from actors.model.chat import TEMPLATES, chat_ids_and_mask, use_template
from actors.model.tokenizer import load_tokenizer
from actors.train.config import FinetuneConfig
from actors.train.datasets import DatasetEntry, check_dataset, prepare
from actors.train.finetune import Finetuner

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def base(debug_smollm2) -> Path:
    return debug_smollm2


def _data(data_root, tmp, rel, fmt, kinds, rows=12):
    """`rows` rows of a shared dataset, also held out as the validation set (the loss on what was trained)."""
    prep = prepare([DatasetEntry("d", data_root / rel, fmt, max_rows=rows)], tmp / "data", 0, 0, 0, kinds)
    return [(prep["paths"]["train"], 0)]


def _cfg(base, **kw) -> FinetuneConfig:
    d = {"base": str(base), "max_len": 160, "batch_size": 4, "max_steps": 8, "log_every": 1,
         "checkpoint": {"resume": "never"},
         "datasets": [{"name": "x"}] if kw.get("objective", "sft") != "sft" else [],
         "optim": {"lr": 1e-2, "warmup_steps": 0, "min_lr_ratio": 1.0}}
    for k, v in kw.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return from_dict(FinetuneConfig, d)


METHODS = {
    "sft-full": ({"objective": "sft", "method": "full", "optim": {"lr": 2e-3}}, "alpaca", ("sft",)),
    "sft-lora": ({"objective": "sft", "method": "lora"}, "alpaca", ("sft",)),
    "sft-qlora": ({"objective": "sft", "method": "qlora", "quant_group": 32}, "alpaca", ("sft",)),
    "dpo-lora": ({"objective": "dpo", "method": "lora", "optim": {"lr": 2e-3}}, "dpo", ("preference",)),
    "kto-lora": ({"objective": "kto", "method": "lora", "optim": {"lr": 2e-3}}, "kto", ("kto",)),
    "rm-full": ({"objective": "rm", "method": "full", "optim": {"lr": 2e-3}}, "dpo", ("preference",)),
}
FILES = {"alpaca": ("sft_alpaca_demo/alpaca_en_demo.json", "alpaca"),
         "dpo": ("preference_demo/dpo_en_demo.json", "sharegpt"),
         "kto": ("preference_demo/kto_en_demo.json", "messages")}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_and_improves_its_objective(name, base, data_root, tmp_path):
    over, data, kinds = METHODS[name]
    srcs = _data(data_root, tmp_path, *FILES[data], kinds)
    cfg = _cfg(base, **over)
    ft = Finetuner(cfg, base, srcs, tmp_path / "out", val_sources=srcs, log=lambda s: None)
    before = ft.evaluate()
    after = ft.run()
    assert after["step"] == cfg.max_steps
    assert after["val_loss"] < before["val_loss"] - 0.01, (before, after)
    if cfg.objective == "dpo":  # the policy moved toward the chosen answers, away from the rejected ones
        assert before["val_reward_margin"] == 0 and after["val_reward_margin"] > 0.05
        assert after["val_reward_acc"] > 0.5
    if cfg.objective == "kto":
        assert after["val_desirable_reward"] > after["val_undesirable_reward"]
    if cfg.objective == "rm":
        assert after["val_reward_acc"] > 0.5
    outs = ft.export(tmp_path / "export", [])
    assert Path(outs["hf"], "config.json").exists()
    if cfg.objective == "rm":  # loads as HF's sequence classifier and scores like our model
        from transformers import AutoModelForSequenceClassification

        from actors.train.losses import scores_at_last_trained
        from actors.train.sft import collate_kind

        hf = AutoModelForSequenceClassification.from_pretrained(outs["hf"]).eval()
        batch = collate_kind(ft.examples[:2], ft.tok.pad_token_id)
        # HF pools the last non-pad token: score the rows cut right after their last trained token
        ours = scores_at_last_trained(ft.model.eval(), batch)
        for r in range(4):
            last = int((batch["labels"][r] != -100).nonzero().max())
            ids = batch["input_ids"][r:r + 1, :last + 1]
            torch.testing.assert_close(hf(ids).logits[0, 0], ours[r], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["lora+ac", "dora"])
def test_lora_adapter_and_merged_export_load_in_peft_and_transformers(variant, base, data_root, tmp_path):
    """The adapter folder loads with peft.PeftModel.from_pretrained on the HF base, the merged folder with
    transformers; both give our trained model's logits (plain LoRA trained under activation checkpointing, whose
    wrapper must not leak into the adapter's names; DoRA merged with its magnitudes)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    srcs = _data(data_root, tmp_path, *FILES["alpaca"], ("sft",))
    # plain LoRA also only on the last layer (peft's layers_to_transform, kept in the adapter's config)
    over = {"parallel": {"activation_checkpointing": "full"}, "lora": {"layers_to_transform": [1]}} \
        if variant == "lora+ac" else {"lora": {"use_dora": True}}
    # an fp32 base: the logits are compared with fp32 HF/peft at 1e-4 (auto is bf16 on a CPU with native bf16)
    ft = Finetuner(_cfg(base, max_steps=3, base_dtype="float32", **over), base, srcs, tmp_path / "out",
                   log=lambda s: None)
    ft.run()
    outs = ft.export(tmp_path / "export", [])
    x = torch.tensor([ft.examples[0]["input_ids"][:40]])
    with torch.no_grad():
        ours = ft.model.eval()(x)
        merged = AutoModelForCausalLM.from_pretrained(outs["hf"]).eval()(x).logits
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), outs["adapter"])
        adapted = peft_model.eval()(x).logits
    assert (ours - load_logits_base(base, x)).abs().max() > 1e-3  # the adapter changed the model
    torch.testing.assert_close(merged, ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(adapted, ours, atol=1e-4, rtol=1e-4)

    # `python -m jobs.chat ADAPTER` talks to the adapter merged into its base: the engine's greedy reply equals
    # HF greedy `generate` on the merged export
    from jobs.chat import load_for_chat

    chat_model, chat_tok, _ = load_for_chat(outs["adapter"], dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(chat_model(x), ours, atol=1e-4, rtol=1e-4)
    from actors.model.chat import encode_chat

    prompt = encode_chat(chat_tok, [{"role": "user", "content": "Give three tips for staying healthy."}])
    hf = AutoModelForCausalLM.from_pretrained(outs["hf"]).eval()
    gen = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):]
    want = chat_tok.decode(gen, skip_special_tokens=True)
    cli = subprocess.run([sys.executable, "-m", "jobs.chat", outs["adapter"], "--dtype", "float32",
                          "--max-tokens", "12"], input="Give three tips for staying healthy.\n/exit\n",
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"assistant: {want}\n" in cli.stdout, (cli.stdout, want)


def load_logits_base(base, x):
    from actors.model import load_hf

    with torch.no_grad():
        return load_hf(base)(x)


def test_resume_gives_the_loss_of_an_uninterrupted_run(base, data_root, tmp_path):
    srcs = _data(data_root, tmp_path, *FILES["alpaca"], ("sft",), rows=20)
    # dropout and activation checkpointing: the RNG state and the wrapped parameter names must round-trip
    over = {"max_steps": 6, "checkpoint": {"every": 3}, "lora": {"dropout": 0.1}, "optim": {"min_lr_ratio": 0.1},
            "parallel": {"activation_checkpointing": "full"}}

    def losses(out):
        return [(r["step"], r["loss"]) for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]

    Finetuner(_cfg(base, **over), base, srcs, tmp_path / "a", log=lambda s: None).run()

    class Stop(Exception):
        pass

    def crash(tr, m):
        if tr.step == 4:  # after the step-3 checkpoint, before the next one
            raise Stop

    with pytest.raises(Stop):
        Finetuner(_cfg(base, **over), base, srcs, tmp_path / "b", log=lambda s: None).run([crash])
    resumed = Finetuner(_cfg(base, **{**over, "checkpoint": {"every": 3, "resume": "auto"}}), base, srcs,
                        tmp_path / "b", log=lambda s: None)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "step_00000003"
    resumed.run()
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # identical, step for step, from step 4 on too


def test_packed_rows_give_the_loss_of_unpacked_batches(base, data_root, tmp_path):
    from actors.model import load_hf
    from actors.train.losses import CausalLMLoss
    from actors.train.sft import collate, collate_packed, load_examples, pack

    tok = load_tokenizer(base)
    srcs = _data(data_root, tmp_path, *FILES["alpaca"], ("sft",), rows=10)
    examples, _ = load_examples(tok, srcs, 200)
    rows = pack(examples, 400)
    assert len(rows) < len(examples)  # several samples share a row
    model = load_hf(base)
    loss = CausalLMLoss(sparse=True)
    with torch.no_grad():
        packed_sum, packed_n = loss(model, collate_packed(rows, tok.pad_token_id))
        sums = [loss(model, collate([e], tok.pad_token_id)) for e in examples]
    unpacked = sum(float(s) for s, _ in sums) / sum(n for _, n in sums)
    assert packed_n == sum(n for _, n in sums)
    assert abs(float(packed_sum) / packed_n - unpacked) <= 1e-5 * unpacked


def _spans(ids, mask):
    out, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


CONVO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3? 三加三"},
         {"role": "assistant", "content": "6, 六"}]
END = {"ours": "<|im_end|>", "chatml": "<|im_end|>", "internlm2": "<|im_end|>", "llama3": "<|eot_id|>"}


@pytest.mark.parametrize("template", TEMPLATES)
def test_loss_mask_is_exactly_the_assistant_turns_for_every_template(template, smollm2):
    tok = use_template(load_tokenizer(smollm2), template)
    ids, mask = chat_ids_and_mask(tok, CONVO)
    assert tok.decode(ids) == tok.apply_chat_template(CONVO, tokenize=False)  # nothing lost or added
    spans = [tok.decode(s) for s in _spans(ids, mask)]
    assert spans == ["4" + END[template], "6, 六" + END[template]]
    # every token outside the spans is prompt or markup: the prompt the model is given at inference
    prompt = tok.apply_chat_template(CONVO[:2], tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids[:mask.index(1)]) == prompt
    # options: only the last turn (mask_history), a turn switched off (`loss: false`), or everything
    ids2, last_only = chat_ids_and_mask(tok, CONVO, train=[False, True])
    assert ids2 == ids and [tok.decode(s) for s in _spans(ids, last_only)] == ["6, 六" + END[template]]
    assert chat_ids_and_mask(tok, CONVO, train_on_prompt=True)[1] == [1] * len(ids)


def test_tool_calls_and_per_turn_loss_flags_in_openai_messages(smollm2, tmp_path):
    from actors.train.sft import load_examples

    row = {"messages": [{"role": "user", "content": "What is 2+3?"},
                        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                            "name": "calculator", "arguments": "{\"expression\": \"2+3\"}"}}]},
                        {"role": "tool", "content": "5"},
                        {"role": "assistant", "content": "It is 5.", "loss": False}],
           "tools": [{"type": "function", "function": {"name": "calculator", "parameters": {
               "type": "object", "properties": {"expression": {"type": "string"}}}}}]}
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(row) + "\n")
    prep = prepare([DatasetEntry("m", p, "auto")], tmp_path / "d", 0)
    tok = load_tokenizer(smollm2)
    (ex,), _ = load_examples(tok, [(prep["paths"]["train"], 0)], 1024)
    trained = tok.decode([t for t in ex["labels"] if t != -100])
    assert "calculator" in trained and "2+3" in trained and "It is 5." not in trained


def test_malformed_rows_are_reported_with_row_numbers_and_quarantined(smollm2, tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    lines = [json.dumps(good), "{not json", json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),
             json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}),
             json.dumps({"text": "no messages"}), json.dumps(good),
             json.dumps({"messages": [{"role": "user", "content": "long " * 300},
                                      {"role": "assistant", "content": "ok"}]})]
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    prep = prepare([DatasetEntry("bad", p, "messages")], tmp_path / "d", 0)
    assert prep["counts"]["bad"] == {"read": 7, "kept": 3, "quarantined": 4}
    q = [json.loads(x) for x in open(prep["paths"]["quarantine"])]
    assert [(r["row"], r["reason_kind"]) for r in q] == [
        (1, "bad_json"), (2, "unknown_role"), (3, "empty_field"), (4, "missing_field")]
    rep = check_dataset(DatasetEntry("bad", p, "messages"), load_tokenizer(smollm2), max_len=64)
    assert [(x["row"], x["reason"].split(":")[0]) for x in rep["problems"]] == [
        (1, "bad_json"), (2, "unknown_role"), (3, "empty_field"), (4, "missing_field"), (6, "too_long")]
    cli = subprocess.run([sys.executable, "-m", "jobs.finetune", "check-dataset", str(p), "--format", "messages"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "row 2: unknown_role: messages[0].role='wizard'" in cli.stdout, cli.stdout


def test_bad_config_names_the_field_and_the_fix(base):
    from actors.common.config import ConfigError

    with pytest.raises(ConfigError, match=r"finetune\.objective.*use one of"):
        from_dict(FinetuneConfig, {"objective": "ppo"})
    with pytest.raises(ConfigError, match=r"finetune\.datasets.*dpo_en_demo"):
        from_dict(FinetuneConfig, {"objective": "dpo"})
    with pytest.raises(ConfigError, match=r"finetune\.template.*chatml"):
        from_dict(FinetuneConfig, {"template": "alpaca"})
    with pytest.raises(ConfigError, match=r"finetune\.lora\.use_dora.*method=lora"):
        from_dict(FinetuneConfig, {"method": "qlora", "lora": {"use_dora": True}})
    with pytest.raises(ConfigError, match=r"finetune\.parallel.*dp_shard"):
        from_dict(FinetuneConfig, {"parallel": {"tp": 2}})
    with pytest.raises(ConfigError, match=r"finetune\.packing"):
        from_dict(FinetuneConfig, {"objective": "dpo", "packing": True, "datasets": [{"name": "dpo_en_demo"}]})


@pytest.mark.ray
def test_fsdp_sharded_finetuning_matches_replicas_and_resumes(ray_session, base, data_root, tmp_path):
    """Full fine-tuning on 2 Ray Train workers: FSDP2 (dp_shard=2: weights, gradients and AdamW state sharded)
    gives the losses of whole replicas (dp_replicate=2) step by step, checkpoints shard by rank, and the export
    gathers the shards."""
    from actors.train.stage import run_finetune
    from transformers import AutoModelForCausalLM

    srcs = _data(data_root, tmp_path, *FILES["alpaca"], ("sft",), rows=32)

    def run(layout, out):
        cfg = _cfg(base, method="full", max_steps=4, checkpoint={"every": 2},
                   batch_size=2, optim={"lr": 2e-3}, parallel={**layout, "cpus_per_worker": 0.5})
        res = run_finetune(cfg, base, [(p, 10 ** 6) for p, _ in srcs], out)  # (file, max rows)
        return res, [(r["step"], r["loss"]) for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]

    rep, replicas = run({"dp_replicate": 2}, tmp_path / "rep")
    res, sharded = run({"dp_shard": 2}, tmp_path / "fsdp")
    assert [s for s, _ in sharded] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(replicas, sharded):
        assert abs(a - b) <= 1e-5 * abs(a), (replicas, sharded)
    assert res["metrics"]["world_size"] == 2
    # the export gathered whole weights: those of the replicas' export, which moved away from the base
    x = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(res["outputs"]["hf"]).eval()(x).logits
        b = AutoModelForCausalLM.from_pretrained(rep["outputs"]["hf"]).eval()(x).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (a - load_logits_base(base, x)).abs().max() > 1e-3
    ckpts = tmp_path / "fsdp" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002", "step_00000004"]
    # each rank wrote its own shard file (resume on this and other layouts: tests/test_resilience.py)
    assert {p.name for p in (ckpts / "step_00000002").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}


def _greedy_reference(model, prompt: list[int], n: int, stops) -> list[int]:
    """Greedy decoding by full forwards of the training model itself (no engine, no cache, nothing merged)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids]))[0, -1].argmax())
            if t in stops:
                break
            ids.append(t)
    return ids[len(prompt):]


SAMPLE_VARIANTS = {"lora+ac": {"method": "lora", "parallel": {"activation_checkpointing": "full"}},
                   "dora": {"method": "lora", "lora": {"use_dora": True}},
                   "qlora": {"method": "qlora", "quant_group": 32}}


@pytest.mark.parametrize("variant", list(SAMPLE_VARIANTS))
def test_sample_hook_generates_through_the_engine_and_leaves_the_model_alone(variant, base, data_root, tmp_path):
    """The sample hook runs the serving engine on a plain copy of the current weights (LoRA / DoRA merged, int4
    dequantised, wrapper names dropped): its text is the greedy decode of the training model itself, which it
    leaves as it was."""
    from actors.model.chat import encode_chat
    from actors.model.tokenizer import stop_token_ids

    srcs = _data(data_root, tmp_path, *FILES["alpaca"], ("sft",), rows=8)
    cfg = _cfg(base, max_steps=2, sample_every=2, base_dtype="float32", optim={"lr": 2e-3},
               **SAMPLE_VARIANTS[variant])
    ft = Finetuner(cfg, base, srcs, tmp_path / "out", log=lambda s: None)
    ft.run()
    assert [s["step"] for s in ft.samples] == [2]
    params = dict(ft.model.named_parameters())
    state = {k: v.clone() for k, v in ft.model.state_dict().items()}
    assert ft.model.training
    text = ft.sample()
    assert text == ft.samples[0]["output"]  # nothing changed in between: the same greedy text
    assert ft.model.training and dict(ft.model.named_parameters()) == params
    assert all(torch.equal(v, state[k]) for k, v in ft.model.state_dict().items())
    ft.model.eval()
    prompt = encode_chat(ft.tok, [{"role": "user", "content": cfg.sample_prompt}])
    ref = _greedy_reference(ft.model, prompt, 48, set(stop_token_ids(ft.tok)))
    assert len(ref) > 0 and text == ft.tok.decode(ref, skip_special_tokens=True)


@pytest.mark.ray
def test_sample_hook_under_fsdp_gathers_the_shards(ray_session, base, data_root, tmp_path):
    """LoRA on 2 FSDP2 workers (dp_shard=2): every rank gathers the shards, rank 0 samples through the engine; the
    last sample is the greedy text of the exported (merged) model."""
    from actors.engine import EngineConfig, LLMEngine, SamplingParams
    from actors.model import load_hf
    from actors.model.chat import encode_chat
    from actors.train.stage import run_finetune

    srcs = _data(data_root, tmp_path, *FILES["alpaca"], ("sft",), rows=8)
    cfg = _cfg(base, method="lora", max_steps=2, sample_every=1, batch_size=2, base_dtype="float32",
               parallel={"dp_shard": 2, "cpus_per_worker": 0.5})
    res = run_finetune(cfg, base, [(p, 10 ** 6) for p, _ in srcs], tmp_path / "out")
    samples = [json.loads(line) for line in open(tmp_path / "out" / "samples.jsonl")]
    assert [s["step"] for s in samples] == [1, 2]  # training went on after a sample
    model = load_hf(res["outputs"]["hf"])
    tok = load_tokenizer(res["outputs"]["hf"])
    prompt = encode_chat(tok, [{"role": "user", "content": cfg.sample_prompt}])
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory="64MiB", max_model_len=len(prompt) + 48))
    want = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=48))
    assert want.completion_tokens > 0 and samples[-1]["output"] == want.text


MERGE_PEAK = """
import json, sys
from pathlib import Path
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
import torch  # noqa: F401 - imported before the baseline
from actors.train.export import merge_lora_export
base, adapter, out = sys.argv[1:4]
before = status("VmRSS")
merge_lora_export(base, adapter, out, [], 0)
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


def test_merge_export_of_the_real_base_peaks_below_one_and_a_half_models(smollm2, tmp_path):
    """Merging a LoRA adapter into SmolLM2 (513 MB in fp32) reads and writes one tensor at a time: the merge
    raises its process's peak resident memory by at most 1.5x the model (measured: ~0.35x), and the merged
    weights are W + (alpha / r) B A."""
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    from actors.model import load_hf

    model = get_peft_model(load_hf(smollm2), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.01)
    model.save_pretrained(str(tmp_path / "adapter"))
    out = subprocess.run([sys.executable, "-c", MERGE_PEAK, str(smollm2), str(tmp_path / "adapter"),
                          str(tmp_path / "merged")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    size = sum(f.stat().st_size for f in Path(smollm2).glob("*.safetensors"))
    assert mem["peak"] - mem["before"] <= 1.5 * size, (mem, size)
    layer = model.base_model.model.model.layers["3"].self_attn.q_proj
    want = layer.base_layer.weight + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    name = "model.layers.3.self_attn.q_proj.weight"
    idx = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(tmp_path / "merged" / idx[name]), framework="pt") as f:
        torch.testing.assert_close(f.get_tensor(name), want.detach(), atol=1e-6, rtol=1e-6)
