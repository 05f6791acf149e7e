"""Runs stages in order against a run dir; shared by `jobs.pipeline` and the per-stage drivers."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from actors.common.config import ConfigError
from jobs.config import STAGES, PipelineConfig, load_config
from jobs.manifest import Manifest, fingerprint

log = logging.getLogger("fullchain")

# Which earlier stages each stage reads (drives fingerprints and "run it first" errors).
UPSTREAM = {
    "data": [],
    "pretrain": ["data"],
    "finetune": ["data", "pretrain"],
    "evaluate": ["data", "pretrain", "finetune"],
    "serve": ["data", "finetune"],
    "agent": ["data", "serve"],
}
SECTION = {"data": "data", "pretrain": "pretrain", "finetune": "finetune", "evaluate": "eval",
           "serve": "serve", "agent": "agent"}


@dataclass
class StageContext:
    cfg: PipelineConfig
    run_dir: Path
    manifest: Manifest
    name: str

    @property
    def dir(self) -> Path:
        d = self.run_dir / self.name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def inputs(self, stage: str) -> dict:
        return self.manifest.outputs(stage)

    def metrics(self, stage: str) -> dict:
        return self.manifest.stage(stage).get("metrics", {})

    def checkpoint_mirror(self) -> str:
        """Where a training stage's checkpoints are mirrored when the storage root is remote (the run dir is then
        local staging): <root>/<run>/<stage>/checkpoints; "" for a local root."""
        import cluster

        root = cluster.storage_root()
        return f"{root.rstrip('/')}/{self.cfg.run.name}/{self.name}/checkpoints" if "://" in root else ""


def upstream(cfg: PipelineConfig, name: str) -> list[str]:
    """The stages `name` reads: a fine-tune from an outside base does not read the pretrain stage."""
    ups = list(UPSTREAM[name])
    if name == "finetune" and cfg.finetune.base != "pretrain":
        ups.remove("pretrain")
    if name == "finetune" and cfg.finetune.synthetic_max_rows + cfg.finetune.sft_max_rows == 0:
        ups.remove("data")  # only registry datasets: the data stage has nothing to give it
    return ups


def stage_fingerprint(cfg: PipelineConfig, manifest: Manifest, name: str) -> str:
    section = dataclasses.asdict(getattr(cfg, SECTION[name]))
    # an upstream stage that re-ran (even with the same config) produced new outputs: include when it finished
    ups = {u: [manifest.stage(u).get("fingerprint"), manifest.stage(u).get("finished")] for u in upstream(cfg, name)}
    return fingerprint({"config": section, "upstream": ups})


def run_stages(cfg: PipelineConfig, run_dir: str | Path, stages: list[str] | None = None,
               force: list[str] | None = None, inputs: dict[str, dict] | None = None) -> Manifest:
    import cluster
    from actors.model.registry import resolve_model
    from cluster import hardware

    run_dir = Path(run_dir)
    manifest = Manifest(run_dir)
    manifest.data["run"] = cfg.run.name
    manifest.data["config"] = dataclasses.asdict(cfg)
    # the driver's machine; each stage records the dtype `auto` resolved to where its model ran
    manifest.data["hardware"] = {"cpu_capability": hardware.cpu_capability(),
                                 "cpu_bf16_native": hardware.cpu_bf16_native(), "auto_dtype": hardware.auto_dtype()}
    for stage, outs in (inputs or {}).items():
        if "hf" in outs:  # a model input: a registry name, a .gguf file or an HF folder
            outs = {**outs, "hf": str(resolve_model(outs["hf"], cluster.model_cache()))}
        manifest.set_external(stage, {**manifest.stage(stage).get("outputs", {}), **outs})
    manifest.save()
    info = cluster.connect()
    log.info("ray: %s", info)
    wanted = set(stages or cfg.run.stages)
    if stages:  # a single-stage command runs the upstream stages this run dir has not completed yet, first
        pending = list(stages)
        while pending:
            for u in upstream(cfg, pending.pop()):
                if u not in wanted and manifest.stage(u).get("status") != "complete":
                    print(f"== {u}: not yet run in {run_dir}; running it first", flush=True)
                    wanted.add(u)
                    pending.append(u)
    todo = [s for s in STAGES if s in wanted]
    force = set(force or [])
    manifest.data["last_invocation"] = {"ran": [], "skipped": []}
    for name in todo:
        fp = stage_fingerprint(cfg, manifest, name)
        mod = importlib.import_module(f"jobs.{name}")
        ctx = StageContext(cfg, run_dir, manifest, name)
        if manifest.is_complete(name, fp) and name not in force:
            print(f"== {name}: complete, skipped (manifest {manifest.path})", flush=True)
            manifest.data["last_invocation"]["skipped"].append(name)
            if hasattr(mod, "on_skip"):
                mod.on_skip(ctx, todo)
            continue
        print(f"== {name}: running", flush=True)
        manifest.start(name, dataclasses.asdict(getattr(cfg, SECTION[name])), fp)
        t0 = time.perf_counter()
        try:
            res = mod.run(ctx)
        except Exception as e:
            from actors.train.stage import TrainingStopped

            if isinstance(e, TrainingStopped):  # asked to stop (stop file, SIGTERM): a clean exit, resumable
                manifest.stopped(name, str(e), time.perf_counter() - t0)
                print(f"== {name}: {e}", flush=True)
                return manifest
            manifest.fail(name, f"{type(e).__name__}: {e}\n{traceback.format_exc()}", time.perf_counter() - t0)
            raise
        manifest.data["last_invocation"]["ran"].append(name)
        manifest.complete(name, res["outputs"], res.get("metrics", {}), time.perf_counter() - t0)
        print(f"== {name}: complete in {time.perf_counter() - t0:.1f}s", flush=True)
    manifest.save()
    return manifest


def base_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--config", default="configs/demo.yaml", help="YAML config (see configs/)")
    p.add_argument("--run-dir", default=None, help="run folder (default: <storage root>/<run.name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set pretrain.max_steps=50 (repeatable)")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="STAGE.KEY=PATH",
                   help="use an outside input instead of a stage's output, e.g. --input finetune.hf=/my/hf_model")
    p.add_argument("--force", action="append", default=[], help="re-run this stage even if complete")
    p.add_argument("--resume", default=None, metavar="auto|never|PATH",
                   help="training stages: auto (default) continues from the stage's latest checkpoint of the same "
                        "config, never starts fresh, PATH loads that checkpoint (on any layout)")
    return p


def resume_overrides(value: str | None, stages: list[str] | None) -> list[str]:
    """`--resume` as config overrides of the training stages it applies to."""
    if value is None:
        return []
    training = [s for s in (stages or ["pretrain", "finetune"]) if s in ("pretrain", "finetune")]
    if value not in ("auto", "never") and len(training) != 1:
        raise ConfigError(f"--resume {value}: a checkpoint path belongs to one training stage; use it with "
                          "`python -m jobs.pretrain` or `python -m jobs.finetune`, or pass auto / never")
    return [f"{s}.checkpoint.resume={value}" for s in training]


def parse_inputs(items: list[str]) -> dict[str, dict]:
    from actors.model.registry import REGISTRY

    out: dict[str, dict] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--input {item!r}: expected STAGE.KEY=PATH, e.g. --input finetune.hf=/path/to/hf")
        key, path = item.split("=", 1)
        stage, k = key.split(".", 1)
        if stage not in STAGES:
            raise ConfigError(f"--input {item!r}: unknown stage {stage!r}; allowed: {list(STAGES)}")
        # a registry name stays a name (resolved to its imported folder by run_stages), never a relative path
        keep = "://" in path or (k == "hf" and path in REGISTRY)
        out.setdefault(stage, {})[k] = path if keep else str(Path(path).resolve())
    return out


def resolve_run_dir(cfg: PipelineConfig, run_dir: str | None) -> Path:
    import cluster

    if run_dir:
        return Path(run_dir).resolve()
    root = cluster.storage_root()
    if "://" in root:
        raise ConfigError(f"FULLCHAIN_STORAGE={root} is remote; pass a local --run-dir as the staging folder")
    return Path(root) / cfg.run.name


def main_for(stages: list[str] | None, prog: str, argv: list[str] | None = None) -> Manifest:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = base_parser(prog)
    if stages and "finetune" in stages:
        parser.add_argument("--publish", default=None, metavar="URL",
                            help="after training, load the adapter into the Serve app at URL (its base, e.g. "
                                 "http://127.0.0.1:8000) under finetune.publish_name, replacing one of that name "
                                 "(same as --set finetune.publish=URL)")
    args = parser.parse_args(argv)
    try:
        publish = [f"finetune.publish={args.publish}"] if getattr(args, "publish", None) else []
        cfg = load_config(args.config, args.overrides + resume_overrides(args.resume, stages) + publish)
        inputs = parse_inputs(args.inputs)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    run_dir = resolve_run_dir(cfg, args.run_dir)
    return run_stages(cfg, run_dir, stages=stages, force=args.force + (stages or []) if stages else args.force,
                      inputs=inputs)
