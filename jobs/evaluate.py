"""`python -m jobs.evaluate`: evaluate models on tasks, on their own or as the pipeline's eval stage.

On its own (lm-eval's options, reports under --output):

    python -m jobs.evaluate --model smollm2-135m-instruct --tasks arc_easy,mmlu,gsm8k --limit 20 --output runs/eval
    python -m jobs.evaluate --model runs/demo/finetune/hf --model smollm2-135m-instruct --tasks arc_easy,piqa
    python -m jobs.evaluate --model http://127.0.0.1:8000/v1 --model-name fullchain --tasks arc_easy
    python -m jobs.evaluate --list-tasks

--model repeats (registry name, .gguf, HF folder / our checkpoint, or an OpenAI-compatible endpoint); each model
gets its column in summary.md. --data TASK=PATH (repeatable) runs a task on another file of the same format.

As the pipeline stage (`--config configs/demo.yaml`, no --model): the fine-tune base and the fine-tuned model on
`eval.tasks`, and this run's from-scratch pretrain output on `eval.pretrain_tasks` when it is not the base.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    import dataclasses

    import cluster
    from actors.eval.runner import run_eval

    cfg = ctx.cfg.eval
    data = ctx.inputs("data")
    ft = ctx.inputs("finetune")
    base_spec = ft.get("base", "pretrain")
    pretrain_hf = ctx.inputs("pretrain")["hf"]
    models, tasks_for = {}, {}
    if base_spec == "pretrain":  # the pretrain output is the base: it gets both task lists
        models["pretrain"] = ft.get("base_hf", pretrain_hf)
        tasks_for["pretrain"] = list(dict.fromkeys(cfg.pretrain_tasks + cfg.tasks))
    else:
        if cfg.pretrain_tasks:
            models["pretrain"] = pretrain_hf
            tasks_for["pretrain"] = cfg.pretrain_tasks
        models["base"] = ft["base_hf"]
    models["finetune"] = ft["hf"]
    inputs = {"perplexity": data.get("val_dir"), "arith_tool": data.get("synthetic_heldout")}
    cfg = dataclasses.replace(cfg, data={**{k: str(v) for k, v in inputs.items() if v}, **cfg.data})
    results = run_eval(models, cfg, ctx.dir, tasks_for=tasks_for, data_root=cluster.data_root(),
                       model_cache=cluster.model_cache())
    return {"outputs": {"results_json": str(ctx.dir / "results.json"), "results_md": str(ctx.dir / "results.md"),
                        "base": base_spec},
            "metrics": results}


def _kv(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} arc_easy=/data/arc_easy_test.jsonl")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _labels(models: list[str]) -> list[str]:
    labels = []
    for m in models:
        base = m.rstrip("/").split("/")[-1] if not m.startswith("http") else m.split("//", 1)[1].split("/")[0]
        base = base or m
        label, k = base, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="registry name, .gguf, HF folder, or http(s)://.../v1 "
                   "(repeat to compare models)")
    p.add_argument("--model-name", action="append", default=[],
                   help="the served model name of each endpoint --model, in order")
    p.add_argument("--tasks", default="", help="comma-separated task or group names, or task .yaml paths")
    p.add_argument("--data", action="append", default=[], help="TASK=PATH: the task's rows from another file")
    p.add_argument("--include-path", action="append", default=[], help="a folder (or file) of more task YAMLs")
    p.add_argument("--limit", type=int, default=None, help="docs per task (per subject for mmlu / cmmlu)")
    p.add_argument("--num-fewshot", type=int, default=None, help="exemplars per prompt (default: each task's)")
    p.add_argument("--apply-chat-template", action="store_true", help="prompts through the model's chat template")
    p.add_argument("--fewshot-as-multiturn", action="store_true", help="exemplars as user/assistant turns")
    p.add_argument("--gen-kwargs", default="", help="max_gen_toks=N,until=STOP (generation tasks)")
    p.add_argument("--log-samples", action=argparse.BooleanOptionalAction, default=True,
                   help="write samples_<model>_<task>.jsonl")
    p.add_argument("--batch-size", type=int, default=None, help="loglikelihood rows per forward pass")
    p.add_argument("--workers", type=int, default=None,
                   help="eval worker actors per model (default: one per eval.num_cpus CPUs of the cluster, at most 8)")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="default auto: bfloat16 where the hardware computes it natively, else float32")
    p.add_argument("--cache-dir", default=None, help="request cache: rerun to resume an interrupted run")
    p.add_argument("--output", default="runs/eval", help="reports go here")
    p.add_argument("--config", default=None, help="a YAML whose `eval:` section gives the defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="eval.KEY=VALUE")
    p.add_argument("--list-tasks", action="store_true", help="print the registered tasks and exit")
    return p


def standalone(argv: list[str]) -> int:
    import logging

    from actors.common.config import ConfigError, apply_overrides, from_dict, load_yaml
    from actors.eval.config import EvalConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parser().parse_args(argv)
    if args.list_tasks:
        from actors.eval.spec import TaskRegistry

        reg = TaskRegistry(args.include_path)
        for name in reg.names():
            s = reg.specs[name]
            print(f"{name:16s} {s.python_task or s.output_type:18s} {s.num_fewshot}-shot  {s.source}")
        return 0
    if not args.model or not args.tasks:
        print("error: give --model and --tasks (or run the pipeline stage with --config)", file=sys.stderr)
        return 2
    section = (load_yaml(args.config).get("eval", {}) if args.config else {})
    cli = {"tasks": [t.strip() for t in args.tasks.split(",") if t.strip()], "pretrain_tasks": [],
           "data": {**section.get("data", {}), **_kv(args.data, "--data")},
           "include_paths": section.get("include_paths", []) + args.include_path,
           "apply_chat_template": args.apply_chat_template or section.get("apply_chat_template", False),
           "fewshot_as_multiturn": args.fewshot_as_multiturn or section.get("fewshot_as_multiturn", False),
           "log_samples": args.log_samples}
    for key, val in (("limit", args.limit), ("num_fewshot", args.num_fewshot), ("batch_size", args.batch_size),
                     ("workers", args.workers), ("dtype", args.dtype), ("cache_dir", args.cache_dir)):
        if val is not None:
            cli[key] = val
    if args.gen_kwargs:
        gk = _kv(args.gen_kwargs.split(","), "--gen-kwargs")
        cli["gen_kwargs"] = {k: (int(v) if k == "max_gen_toks" else [v]) for k, v in gk.items()}
    try:
        data = apply_overrides({"eval": {**section, **cli}}, args.overrides)["eval"]
        cfg = from_dict(EvalConfig, data, prefix="eval")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    endpoints = [m for m in args.model if m.startswith(("http://", "https://"))]
    if len(args.model_name) not in (0, len(endpoints)):
        print(f"error: {len(args.model_name)} --model-name for {len(endpoints)} endpoint --model; give one per "
              "endpoint, in order", file=sys.stderr)
        return 2
    labels = _labels(args.model)
    names = dict(zip([lab for lab, m in zip(labels, args.model) if m in endpoints], args.model_name))
    for lab, m in zip(labels, args.model):
        if m in endpoints and lab not in names:
            names[lab] = "fullchain"  # our server's default --model-name

    import cluster
    from actors.eval.runner import run_eval

    cluster.connect()
    if "workers" not in cli and "workers" not in section and not any(o.startswith("eval.workers=")
                                                                      for o in args.overrides):
        import dataclasses

        # lm-eval uses the whole machine by default; so do we: one worker per eval.num_cpus cores of the cluster
        cfg = dataclasses.replace(cfg, workers=max(1, min(8, int(cluster.compute_cpus() // cfg.num_cpus))))
    try:
        report = run_eval(dict(zip(labels, args.model)), cfg, Path(args.output), model_names=names,
                          data_root=cluster.data_root(), model_cache=cluster.model_cache())
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output)
    print((out / "summary.md").read_text())
    print(f"reports: {out / 'results.json'}, {out / 'summary.md'}, {out / 'summary.csv'}, {out / 'results.png'}"
          f" ({report['seconds']:.0f} s)")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m jobs.evaluate") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--model" or a.startswith("--model=") or a == "--list-tasks" for a in argv):
        return standalone(argv)
    main_for(["evaluate"], prog, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
