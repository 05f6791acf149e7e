"""`python -m jobs.chat MODEL_OR_ADAPTER`: talk to a checkpoint or a LoRA adapter in the terminal.

MODEL_OR_ADAPTER is a registry name (`python -m jobs.models list`), a .gguf file, an HF folder (a fine-tune's
`finetune/hf`), or a peft adapter folder (`finetune/adapter`: merged into its base in memory; `--base` overrides
the base it names). Replies stream token by token from the serving engine (the one decode path), rendered with
the model's chat template (`--template NAME` picks one of ours). Commands: `/reset` starts a new conversation,
`/system TEXT` sets the system prompt, `/exit` (or end of input) quits. Reads stdin, so it can be scripted:

    printf 'What is 12 + 30?\\n/exit\\n' | python -m jobs.chat runs/demo/finetune/adapter
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def load_for_chat(spec: str, base: str = "", dtype: str = "auto", template: str = ""):
    """(model, tokenizer, what was loaded) for a model spec or an adapter folder."""
    import torch

    import cluster
    from cluster.hardware import torch_dtype
    from actors.model.chat import use_template
    from actors.model.hf import load_hf
    from actors.model.lora import adapter_base, is_adapter, merge_lora_
    from actors.model.registry import resolve_model
    from actors.model.tokenizer import load_tokenizer

    adapter = Path(spec) if is_adapter(spec) else None
    model_spec = (base or adapter_base(adapter)) if adapter else spec
    model_dir = resolve_model(model_spec, cluster.model_cache())
    # merge in fp32, then cast: the adapter's update is often below bf16's resolution of the base weight
    dtype = torch_dtype(dtype, field="--dtype")
    model = load_hf(model_dir, dtype=torch.float32 if adapter else dtype)
    if adapter:
        merge_lora_(model, adapter).to(dtype)
    tok_dir = adapter if adapter and (adapter / "tokenizer.json").exists() else model_dir
    tok = use_template(load_tokenizer(tok_dir), template)
    return model.eval(), tok, f"{model_dir}" + (f" + adapter {adapter}" if adapter else "") + f" in {dtype}"


def chat_loop(engine, tok, params, lines, write, system: str = "") -> list[dict]:
    """One conversation over `lines` (user turns and commands); each reply streams through `write`. Returns the
    messages of the last conversation."""
    from actors.model.chat import encode_chat

    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    n = 0
    for line in lines:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            messages = [m for m in messages if m["role"] == "system"]
            write("[new conversation]\n")
            continue
        if text.startswith("/system "):
            messages = [{"role": "system", "content": text[8:].strip()}] + [m for m in messages
                                                                          if m["role"] != "system"]
            continue
        messages.append({"role": "user", "content": text})
        ids = encode_chat(tok, messages)
        if len(ids) >= engine.max_model_len:
            write(f"[the conversation is {len(ids)} tokens, the model's context {engine.max_model_len}: /reset]\n")
            messages.pop()
            continue
        n += 1
        engine.add_request(f"chat-{n}", ids, params)
        reply = []
        write("assistant: ")
        while engine.has_unfinished():
            for out in engine.step():
                write(out.delta_text)
                reply.append(out.delta_text)
        write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
    return messages


def main(argv: list[str] | None = None, prog: str = "python -m jobs.chat") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="registry name, .gguf file, HF folder, or peft adapter folder")
    ap.add_argument("--base", default="", help="the adapter's base (default: the one its adapter_config names)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="auto: bfloat16 where the hardware computes it natively, else float32")
    ap.add_argument("--template", default="", help="chat template by name (ours, chatml, internlm2, llama3)")
    ap.add_argument("--system", default="", help="system prompt")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)

    import torch

    from actors.common.config import ConfigError
    from actors.common.memory import keep_freed_memory_in_heap
    from actors.engine import EngineConfig, LLMEngine, SamplingParams

    if a.threads:
        torch.set_num_threads(a.threads)
    keep_freed_memory_in_heap()  # a process setting: the engine's step temporaries stay in the heap
    try:
        params = SamplingParams(temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_tokens, seed=a.seed)
        model, tok, what = load_for_chat(a.model, a.base, a.dtype, a.template)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine = LLMEngine(model, tok, EngineConfig(max_num_seqs=1, kv_cache_memory="256MiB",
                                                max_model_len=min(4096, model.config.max_position_embeddings)))
    interactive = sys.stdin.isatty()
    print(f"[chat with {what}; /reset, /system TEXT, /exit]", flush=True)

    def lines():
        while True:
            if interactive:
                print("you: ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    def write(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    chat_loop(engine, tok, params, lines(), write, a.system)
    return 0


if __name__ == "__main__":
    sys.exit(main())
