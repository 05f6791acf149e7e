"""`/metrics` in Prometheus text under vLLM's metric names, from every engine replica's counters.

Each replica's engine keeps its own counts (actors.engine.metrics; engine gauges from `LLMEngine.stats`); the
ingress gathers them from all replicas at scrape time and renders one exposition, each series labelled with
`model_name` (the base's served name, or "base:adapter") and `engine` (the replica), as vLLM labels its engines.
"""
from __future__ import annotations

import math

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kw) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in kw.items()) + "}"


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


class _Family:
    def __init__(self, name: str, kind: str, help: str):
        self.name, self.kind, self.help, self.lines = name, kind, help, []

    def add(self, value, suffix: str = "", **labels) -> None:
        self.lines.append(f"{self.name}{suffix}{_labels(**labels)} {_num(value)}")

    def text(self) -> str:
        return "\n".join([f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self.lines])


def render(replicas: list[dict], base_name: str) -> str:
    """Prometheus text for the `stats()` of each engine replica (those that answered)."""
    def model(m: str) -> str:
        return base_name if not m else f"{base_name}:{m}"

    fam = {
        "running": _Family("vllm:num_requests_running", "gauge", "Requests in model execution batches."),
        "waiting": _Family("vllm:num_requests_waiting", "gauge", "Requests waiting to be processed."),
        "kv": _Family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
        "pq": _Family("vllm:prefix_cache_queries", "counter", "Prefix cache queries, in tokens."),
        "ph": _Family("vllm:prefix_cache_hits", "counter", "Prefix cache hits, in tokens."),
        "pre": _Family("vllm:num_preemptions", "counter", "Cumulative number of preemptions."),
        "pt": _Family("vllm:prompt_tokens", "counter", "Number of prefill tokens processed."),
        "gt": _Family("vllm:generation_tokens", "counter", "Number of generation tokens processed."),
        "ok": _Family("vllm:request_success", "counter", "Count of finished requests, by finish reason."),
        "lora": _Family("vllm:lora_requests_info", "gauge", "Running stats on LoRA requests."),
    }
    hists: dict[str, _Family] = {}
    for st in replicas:
        eng = str(st.get("replica", "0"))
        base = {"model_name": base_name, "engine": eng}
        fam["running"].add(st.get("running", 0), **base)
        fam["waiting"].add(st.get("waiting", 0) + len(st.get("lora_waiting", [])), **base)
        total = max(st.get("kv_blocks_total", 0), 1)
        fam["kv"].add(1.0 - st.get("kv_blocks_free", 0) / total, **base)
        fam["pq"].add(st.get("prefix_cache_queries", 0), "_total", **base)
        fam["ph"].add(st.get("prefix_cache_hits", 0), "_total", **base)
        fam["pre"].add(st.get("preemptions", 0), "_total", **base)
        fam["lora"].add(1, max_lora=st.get("max_loras", 0), running_lora_adapters=",".join(st.get("lora_running", [])),
                        waiting_lora_adapters=",".join(st.get("lora_waiting", [])), engine=eng)
        m = st.get("metrics") or {}
        for key, f in (("prompt_tokens", "pt"), ("generation_tokens", "gt")):
            for name, n in (m.get(key) or {}).items():
                fam[f].add(n, "_total", model_name=model(name), engine=eng)
        for name, reason, n in m.get("request_success", []):
            fam["ok"].add(n, "_total", model_name=model(name), engine=eng, finished_reason=reason)
        for hname, name, buckets, counts, total_sum in m.get("histograms", []):
            f = hists.get(hname)
            if f is None:
                f = hists[hname] = _Family(f"vllm:{hname}", "histogram", f"Histogram of {hname.replace('_', ' ')}.")
            labels = {"model_name": model(name), "engine": eng}
            cum = 0
            for le, c in zip([*buckets, math.inf], counts):
                cum += c
                f.add(cum, "_bucket", **labels, le=_num(float(le)))
            f.add(cum, "_count", **labels)
            f.add(float(total_sum), "_sum", **labels)
    return "\n".join(f.text() for f in [*fam.values(), *hists.values()]) + "\n"
