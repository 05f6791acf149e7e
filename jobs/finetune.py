"""`python -m jobs.finetune --config configs/finetune-{lora,qlora,full,dpo,kto,rm}.yaml`: fine-tune a base with
one objective (sft | dpo | kto | rm) and method (lora | qlora | full) on registry datasets and/or the data
stage's SFT sets; outputs a peft adapter and the merged HF checkpoint.

`python -m jobs.finetune check-dataset NAME_OR_PATH [--format F] [--base MODEL --max-len N --template T]`
reports every problem row (missing field, empty turn, unknown role, over-long sample) with its row number,
without training.

The base is `finetune.base`: `pretrain` (this run's pretrain output, or `--input pretrain.hf=MODEL`), a registry
name such as `smollm2-135m-instruct`, a .gguf file or a Llama-family HF folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    import cluster
    from actors.train.stage import run_finetune

    cfg = ctx.cfg.finetune
    cfg.checkpoint.mirror = cfg.checkpoint.mirror or ctx.checkpoint_mirror()
    base = finetune_base(ctx)
    sources = []
    if cfg.synthetic_max_rows + cfg.sft_max_rows > 0:  # the pipeline's own SFT sets, from the data stage
        data = ctx.inputs("data")
        sources = [(data["synthetic_train"], cfg.synthetic_max_rows)]
        sources += [(p, cfg.sft_rows.get(Path(p).stem, cfg.sft_max_rows)) for p in data.get("sft", [])]
        if cfg.sft_rows:   # a name that matches no set is a typo, not a silent default
            unknown = set(cfg.sft_rows) - {Path(p).stem for p in data.get("sft", [])}
            if unknown:
                raise ValueError(f"finetune.sft_rows names {sorted(unknown)}, which the data stage did not make; "
                                 f"its SFT sets: {[Path(p).stem for p in data.get('sft', [])]}")
    res = run_finetune(cfg, base, sources, ctx.dir, lineage=[{"stage": "base", "spec": cfg.base, "hf": base}],
                       data_root=cluster.data_root())
    res["outputs"].update(base=cfg.base, base_hf=str(base))
    if cfg.publish:
        res["outputs"]["published"] = publish_adapter(cfg.publish, cfg.publish_name or ctx.cfg.run.name,
                                                      snapshot_adapter(res["outputs"]["adapter"], ctx.dir))
    return res


def snapshot_adapter(adapter_dir: str, stage_dir: Path) -> Path:
    """A copy of the adapter under <stage>/published/<UTC time>: a later run rewrites `adapter/`, and a replica
    that loads the published adapter later must read what was published."""
    import shutil
    import time

    dest = Path(stage_dir) / "published" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    shutil.copytree(adapter_dir, dest, dirs_exist_ok=True)
    return dest


def publish_adapter(url: str, name: str, adapter_dir: str, timeout_s: float = 60.0) -> dict:
    """Load `adapter_dir` into the running Serve app at `url` as `name`, replacing an adapter of that name (requests
    in flight finish on the old one). The key of FULLCHAIN_API_KEY goes along when set."""
    import httpx

    from cluster.env import settings

    keys = settings().api_keys
    headers = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
    try:
        r = httpx.post(url.rstrip("/").removesuffix("/v1") + "/v1/load_lora_adapter", headers=headers,
                       json={"lora_name": name, "lora_path": str(Path(adapter_dir).resolve()), "load_inplace": True},
                       timeout=timeout_s)
    except httpx.HTTPError as e:
        raise RuntimeError(f"finetune.publish: cannot reach the Serve app at {url} ({e}); is it running?") from None
    if r.status_code != 200:
        raise RuntimeError(f"finetune.publish: {url} refused the adapter ({r.status_code}): {r.text[:300]}")
    return r.json()


def finetune_base(ctx: StageContext) -> str:
    """The HF folder of `finetune.base` (imported once into the model cache for a registry name or .gguf)."""
    spec = ctx.cfg.finetune.base
    if spec == "pretrain":
        return ctx.inputs("pretrain")["hf"]
    import cluster
    from actors.model.registry import resolve_model

    return str(resolve_model(spec, cluster.model_cache()))


def check_dataset_main(argv: list[str]) -> int:
    import cluster
    from actors.common.formats import FORMATS
    from actors.train.config import DatasetConfig
    from actors.train.datasets import check_dataset, load_registry, resolve

    p = argparse.ArgumentParser(prog="python -m jobs.finetune check-dataset",
                                description="Report every problem row of a fine-tuning dataset, with row numbers.")
    p.add_argument("dataset", help="a registry name (configs/datasets.yaml) or a file (json / jsonl / parquet)")
    p.add_argument("--format", default="auto", choices=list(FORMATS))
    p.add_argument("--columns", default="", help="ours=theirs,... when the file names its columns otherwise")
    p.add_argument("--base", default="", help="a model whose tokenizer measures lengths (registry name / folder)")
    p.add_argument("--template", default="", help="chat template by name (ours, chatml, internlm2, llama3)")
    p.add_argument("--max-len", type=int, default=0, help="flag samples longer than this many tokens")
    p.add_argument("--show", type=int, default=50, help="problem rows to print (all go to --json)")
    p.add_argument("--json", default="", help="write the full report here")
    args = p.parse_args(argv)
    from pathlib import Path

    reg = load_registry()
    is_name = args.dataset in reg
    cols = dict(kv.split("=", 1) for kv in args.columns.split(",") if kv)
    spec = DatasetConfig(name=args.dataset if is_name else "", path="" if is_name else str(Path(args.dataset)),
                         format=args.format, columns=cols)
    try:
        entry = resolve(spec, reg, cluster.data_root())
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tok = None
    if args.base:
        from actors.model.registry import resolve_model
        from actors.model.tokenizer import load_tokenizer

        tok = load_tokenizer(resolve_model(args.base, cluster.model_cache()))
    rep = check_dataset(entry, tok, args.max_len, args.template)
    print(f"{rep['dataset']} ({rep['path']}, format {rep['format']}): {rep['read']} rows, {rep['kept']} readable, "
          f"{rep['quarantined']} quarantined" + (f"; kinds {rep['kinds']}; tokens p50 {rep['tokens_p50']} max "
                                                 f"{rep['tokens_max']}" if tok else ""))
    for prob in rep["problems"][:args.show]:
        where = f"row {prob['row']}" if prob["row"] is not None else "file"
        print(f"  {where}: {prob['reason']}")
    if len(rep["problems"]) > args.show:
        print(f"  ... {len(rep['problems']) - args.show} more (--show N or --json FILE)")
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2, ensure_ascii=False))
    return 1 if rep["problems"] else 0


def main(argv: list[str] | None = None, prog: str = "python -m jobs.finetune") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check-dataset"]:
        return check_dataset_main(argv[1:])
    main_for(["finetune"], prog, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
