"""`ServeConfig`: the one serving schema. The pipeline's `serve:` section, the `args` of `serve run
configs/serve.yaml` (`deployment.build_app`) and `start_server(...)` all take it; its `engine` section is the engine's
own `EngineConfig` (actors/engine), handed to the engine as it is.

    serve:
      model: finetune          # or a registry name, a .gguf file, an HF folder
      dtype: auto
      engine: {max_num_seqs: 64, kv_cache_memory: 2GiB}

Ray-free and cheap to validate: a registry name or a .gguf file is only checked here; `resolve_model_dir` imports
it (once, into `model_cache`) when a server starts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from actors.common.config import check
from actors.engine.engine import EngineConfig
from cluster.hardware import DTYPE_CHOICES

# the engine's keys used to sit at the top of the serve args / section
_ENGINE_KEYS = ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_memory", "enable_prefix_caching",
                "max_model_len")


@dataclass
class ServeConfig:
    RENAMED = {"model_dir": "serve.model", **{k: f"serve.engine.{k}" for k in _ENGINE_KEYS}}

    # what to serve: a registry name, a .gguf file or an HF folder; in the pipeline also "finetune" (this run's
    # fine-tuned model, the default)
    model: str = "finetune"
    model_cache: str = "runs/models"   # where a registry name / .gguf is imported (once)
    model_name: str = "fullchain"      # the `model` clients must send
    port: int = 8000                   # HTTP port on 127.0.0.1; 0 in the pipeline: any free port
    grpc_port: int = 0                 # gRPC port of Ray Serve's gRPC proxy (actors/serve/proto); 0 = no gRPC
    num_replicas: int = 1
    num_cpus: float = 1.0              # per engine replica (the ingress reserves none)
    num_gpus: float = 0.0              # per engine replica; > 0 also puts the model on cuda
    max_ongoing_requests: int = 256    # per engine replica; beyond engine.max_num_seqs they wait in the engine
    # auto: bfloat16 where the hardware computes it natively (a GPU, a CPU with avx512_bf16/AMX), else float32;
    # resolved where the replica loads the model (cluster.hardware)
    dtype: str = "auto"
    torch_threads: int = 0             # 0 = torch's default (Ray sets OMP threads = num_cpus)
    engine_niceness: int | None = 0    # nice value of the engine's step threads (Ray runs workers at 15; null: keep)
    request_retries: int = 3           # resends of a request whose replica died before it produced output
    # a tool call the model opens is decoded under the offered functions' grammar (llguidance; llama.cpp's lazy
    # tool-call grammars): offered names, required arguments, schema types and enums
    guided_tool_calls: bool = True
    graceful_shutdown_timeout_s: float = 30.0
    # Bearer keys every route but /health requires (empty: open); `jobs.serve` and `serve run configs/serve.yaml`
    # add the keys of FULLCHAIN_API_KEY (comma-separated) to these
    api_keys: list[str] = field(default_factory=list)
    # LoRA adapters served from the start, {name: peft folder} (vLLM's --lora-modules name=path; a list of
    # "name=path" strings works too); clients send `model: "<model_name>:<name>"` or `"<name>"`
    lora_modules: dict[str, str] = field(default_factory=dict)
    # Ray Serve's autoscaling_config for the engine replicas (min_replicas, max_replicas,
    # target_ongoing_requests, upscale_delay_s, downscale_delay_s, ...); set, it replaces num_replicas
    autoscaling: dict | None = None
    # route a request to the replica that served its prompt's first `prefix_routing_tokens` tokens before
    # (rendezvous hashing; the less loaded of two when that one is `prefix_routing_imbalance` requests busier)
    prefix_routing: bool = True
    prefix_routing_tokens: int = 256
    prefix_routing_imbalance: int = 8
    engine: EngineConfig = field(default_factory=EngineConfig)
    # the web console at /ui/ (chat, runs, lineage; actors/serve/console.py) over the run folders in `runs_root`
    # ("" = chat only); `fullchain ui RUN_DIR` sets both
    console: bool = True
    runs_root: str = ""
    # the pipeline's serve stage only
    keep_alive: bool = False           # leave the endpoint up after the pipeline (Ctrl-C stops it)
    demo_prompt: str = "What is 4821 + 937?"
    demo_with_tools: bool = True       # send the synthetic task's tool specs with the demo chat
    demo_max_tokens: int = 48

    def __post_init__(self):
        if isinstance(self.engine, dict):
            from actors.common.config import from_dict

            self.engine = from_dict(EngineConfig, self.engine, prefix="serve.engine")
        check(isinstance(self.engine, EngineConfig), "serve.engine",
              f"must be a mapping of engine settings ({', '.join(_ENGINE_KEYS)}, name), got {self.engine!r}")
        check(isinstance(self.model, str) and self.model.strip() != "", "serve.model",
              "is required: 'finetune' (the pipeline's fine-tuned model), a registry name such as "
              "smollm2-135m-instruct, a .gguf file or an HF folder such as runs/demo/finetune/hf")
        if self.model != "finetune":
            from actors.model.registry import spec_problem

            why = spec_problem(self.model)
            check(why is None, "serve.model", f"{why}; use 'finetune' (this run's fine-tuned model), a registry "
                                              "name, a .gguf file or an HF folder")
        check(isinstance(self.model_name, str) and self.model_name.strip() != "", "serve.model_name",
              "must be a non-empty string (clients send it as `model`), e.g. fullchain")
        check(0 <= self.port < 65536, "serve.port", f"must be a TCP port (0 = any free port), got {self.port}")
        check(0 <= self.grpc_port < 65536, "serve.grpc_port", f"must be a TCP port (0 = no gRPC), got {self.grpc_port}")
        check(self.num_replicas >= 1, "serve.num_replicas", f"must be >= 1, got {self.num_replicas}")
        check(self.num_cpus >= 0, "serve.num_cpus", f"must be >= 0, got {self.num_cpus}")
        check(self.num_gpus >= 0, "serve.num_gpus", f"must be >= 0, got {self.num_gpus}")
        check(self.max_ongoing_requests >= 1, "serve.max_ongoing_requests",
              f"must be >= 1, got {self.max_ongoing_requests}")
        check(self.dtype in DTYPE_CHOICES, "serve.dtype",
              f"{self.dtype!r}: use one of {list(DTYPE_CHOICES)} (auto: bfloat16 where the hardware computes it "
              "natively, else float32)")
        check(self.torch_threads >= 0, "serve.torch_threads", f"must be >= 0 (0 = torch's default), got "
                                                              f"{self.torch_threads}")
        check(self.engine_niceness is None or -20 <= self.engine_niceness <= 19, "serve.engine_niceness",
              f"must be a nice value in [-20, 19] or null (keep Ray's), got {self.engine_niceness}")
        check(self.request_retries >= 0, "serve.request_retries", f"must be >= 0, got {self.request_retries}")
        check(self.graceful_shutdown_timeout_s >= 0, "serve.graceful_shutdown_timeout_s",
              f"must be >= 0 seconds, got {self.graceful_shutdown_timeout_s}")
        check(self.demo_max_tokens >= 1, "serve.demo_max_tokens", f"must be >= 1, got {self.demo_max_tokens}")
        if isinstance(self.api_keys, str):
            self.api_keys = [k for k in self.api_keys.split(",") if k.strip()]
        check(isinstance(self.api_keys, list) and all(isinstance(k, str) and k.strip() for k in self.api_keys),
              "serve.api_keys", f"must be a list of non-empty strings, got {self.api_keys!r}")
        self.api_keys = [k.strip() for k in self.api_keys]
        if isinstance(self.lora_modules, (list, str)):
            items = [self.lora_modules] if isinstance(self.lora_modules, str) else self.lora_modules
            check(all(isinstance(i, str) and "=" in i for i in items), "serve.lora_modules",
                  f"{self.lora_modules!r}: give {{name: path}} or a list of 'name=path' strings")
            self.lora_modules = dict(i.split("=", 1) for i in items)
        check(isinstance(self.lora_modules, dict) and all(
            isinstance(k, str) and k and ":" not in k and isinstance(v, str) and v
            for k, v in self.lora_modules.items()), "serve.lora_modules",
            f"{self.lora_modules!r}: give {{name: peft adapter folder}}; names may not contain ':'")
        if self.autoscaling is not None:
            check(isinstance(self.autoscaling, dict), "serve.autoscaling",
                  f"must be a mapping of Ray Serve autoscaling_config fields, got {self.autoscaling!r}")
            from pydantic import ValidationError
            from ray.serve.config import AutoscalingConfig

            fields = set(getattr(AutoscalingConfig, "model_fields", None) or AutoscalingConfig.__fields__)
            unknown = sorted(set(self.autoscaling) - fields)
            check(not unknown, f"serve.autoscaling.{unknown[0] if unknown else ''}",
                  f"is not a Ray Serve autoscaling_config field; use min_replicas, max_replicas, "
                  "target_ongoing_requests, upscale_delay_s, downscale_delay_s, ...")
            try:
                AutoscalingConfig(**self.autoscaling)
            except (ValidationError, TypeError, ValueError) as e:
                errs = e.errors() if isinstance(e, ValidationError) else [{"loc": (), "msg": str(e)}]
                where = ".".join(str(x) for x in errs[0]["loc"])
                check(False, f"serve.autoscaling{'.' + where if where else ''}",
                      f"{errs[0]['msg']} (Ray Serve's autoscaling_config: min_replicas, max_replicas, "
                      "target_ongoing_requests, upscale_delay_s, downscale_delay_s)")
        check(self.prefix_routing_tokens >= 1, "serve.prefix_routing_tokens",
              f"must be >= 1, got {self.prefix_routing_tokens}")
        check(self.prefix_routing_imbalance >= 1, "serve.prefix_routing_imbalance",
              f"must be >= 1, got {self.prefix_routing_imbalance}")

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    def max_len(self) -> int:
        """The served context length (after `resolve_model_dir`): the model's, capped by engine.max_model_len."""
        ctx = int(json.loads((Path(self.model) / "config.json").read_text())["max_position_embeddings"])
        return min(ctx, self.engine.max_model_len) if self.engine.max_model_len else ctx


def resolve_model_dir(cfg: ServeConfig) -> ServeConfig:
    """`cfg` with `model` as an absolute HF folder (replicas may start in another working directory): a registry
    name or a .gguf file is imported once into `model_cache`. Fails naming `serve.model` and the fix."""
    from actors.common.config import ConfigError
    from actors.model.registry import REGISTRY, ModelSpecError, resolve_model

    spec = cfg.model
    check(spec != "finetune", "serve.model", "'finetune' means the pipeline's fine-tuned model and only the "
                                             "pipeline resolves it; give an HF folder such as runs/demo/finetune/hf, "
                                             "a registry name or a .gguf file")
    p = Path(spec).expanduser()
    check(spec in REGISTRY or spec.endswith(".gguf") or p.is_dir(), "serve.model",
          f"{str(p)!r} is not a directory; run the finetune stage first or point at a Hugging Face model folder, a "
          "registry name or a .gguf file")
    try:  # a registry name, a .gguf file or an InternLM2 folder is converted once into the model cache
        p = resolve_model(spec, cfg.model_cache)
    except ModelSpecError as e:
        raise ConfigError(f"serve.model: {e}") from None
    check((p / "tokenizer.json").exists(), "serve.model",
          f"{str(p)!r} has no tokenizer.json; export with save_hf(..., tokenizer_dir=...)")
    return replace(cfg, model=str(p.resolve()))
