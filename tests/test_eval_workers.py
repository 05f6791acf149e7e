"""Eval workers on the real local Ray: 1 vs 2 workers give the same predictions and log-likelihoods, the request
cache resumes a run, the OpenAI backend against our own Serve deployment scores ARC-Easy like the local
backend, and `python -m jobs.evaluate` writes every report end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from actors.eval.config import EvalConfig
from actors.eval.tasks import build_tasks

REPO = Path(__file__).resolve().parents[1]
NAMES = ["arc_easy", "hellaswag", "piqa", "mmlu_anatomy", "gsm8k"]


def _pool_run(model: str, cfg: EvalConfig, data_root, cache: Path | None = None, kill_one: bool = False):
    import ray

    from actors.eval.actor import EvalWorkerActor
    from actors.eval.pool import CachedBackend, WorkerPool
    from actors.eval.runner import run_tasks

    def spawn():
        return EvalWorkerActor.options(num_cpus=1).remote(model, cfg)

    pool = WorkerPool([spawn() for _ in range(cfg.workers)], "m", cfg.batch_size, cfg.max_num_seqs,
                      progress=False, spawn=spawn, log=lambda s: None)
    if kill_one:  # a worker dies: every shard sent to it fails and is retried on its replacement
        ray.kill(pool.workers[0])
    try:
        backend = pool if cache is None else CachedBackend(pool, cache, model_key=model)
        return run_tasks(backend, build_tasks(NAMES, cfg, data_root)), pool if cache is None else backend
    finally:
        for w in pool.workers:
            ray.kill(w)


@pytest.mark.ray
def test_one_vs_two_workers_same_predictions_and_cache_resume(debug_smollm2, ray_session, data_root, tmp_path):
    base = dict(tasks=NAMES, limit=10, gen_kwargs={"max_gen_toks": 24}, device="cpu", dtype="float32",
                progress=False)
    one, _ = _pool_run(str(debug_smollm2), EvalConfig(workers=1, batch_size=1, **base), data_root)
    two, _ = _pool_run(str(debug_smollm2), EvalConfig(workers=2, batch_size=16, **base), data_root)
    worst = 0.0
    for name in NAMES:
        a, b = one[name]["samples"], two[name]["samples"]
        assert len(a) == len(b) == (5 if name == "mmlu_anatomy" else 10)
        for sa, sb in zip(a, b):
            if name == "gsm8k":
                assert sa["resps"] == sb["resps"] and sa["filtered_resps"] == sb["filtered_resps"]
                continue
            assert (sa["acc"], sa.get("acc_norm")) == (sb["acc"], sb.get("acc_norm")), name
            worst = max(worst, max(abs(x[0] - y[0]) for x, y in zip(sa["resps"], sb["resps"])))
        assert one[name]["metrics"] == two[name]["metrics"]
    assert worst <= 1e-5, worst
    # a killed eval worker: its shards are retried (on a replacement) and the scores are the undisturbed run's
    hurt, pool = _pool_run(str(debug_smollm2), EvalConfig(workers=2, batch_size=16, **base), data_root, kill_one=True)
    assert pool.retries >= 1
    for name in NAMES:
        assert hurt[name]["metrics"] == two[name]["metrics"], name
    # the request cache: a first run fills it; a rerun (an interrupted run resumed) computes nothing new
    cache = tmp_path / "cache.jsonl"
    cfg = EvalConfig(workers=2, **base)
    first, b1 = _pool_run(str(debug_smollm2), cfg, data_root, cache)
    n_lines = len(cache.read_text().splitlines())
    assert b1.hits == 0 and n_lines > 0
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[: n_lines // 2]) + "\n" + lines[n_lines // 2][:10])  # cut mid-line
    again, b2 = _pool_run(str(debug_smollm2), cfg, data_root, cache)
    assert b2.hits == n_lines // 2
    for name in NAMES:
        assert again[name]["metrics"] == first[name]["metrics"]


@pytest.mark.ray
def test_openai_backend_against_our_serve_matches_local(debug_smollm2, ray_session, data_root):
    from actors.eval.backend import GenerateRequest, LocalModelBackend, LoglikelihoodRequest
    from actors.eval.openai_backend import EndpointError, OpenAIBackend
    from actors.eval.runner import run_tasks
    from actors.serve.deployment import start_server, stop_server
    from tests.conftest import free_port

    cfg = EvalConfig(tasks=["arc_easy"], limit=40, progress=False)
    local = run_tasks(LocalModelBackend(debug_smollm2, device="cpu", dtype="float32", progress=False),
                      build_tasks(["arc_easy"], cfg, data_root))["arc_easy"]
    url = start_server({"model": str(debug_smollm2), "model_name": "dbg", "port": free_port(), "dtype": "float32",
                        "engine": {"kv_cache_memory": "64MiB"}}, app_name="evaltest")
    try:
        remote_backend = OpenAIBackend(f"{url}/v1", "dbg", batch_size=8, progress=False, concurrency=2)
        remote = run_tasks(remote_backend, build_tasks(["arc_easy"], cfg, data_root))["arc_easy"]
        assert remote["metrics"]["acc"] == local["metrics"]["acc"]
        assert remote["metrics"]["acc_norm"] == local["metrics"]["acc_norm"]
        worst = max(abs(x[0] - y[0]) for sa, sb in zip(local["samples"], remote["samples"])
                    for x, y in zip(sa["resps"], sb["resps"]))
        assert worst <= 1e-3, worst
        # a wrong model name and an unreachable server fail with what to do
        with pytest.raises(EndpointError, match="HTTP 404"):
            OpenAIBackend(f"{url}/v1", "nope", progress=False).loglikelihood([LoglikelihoodRequest("Q:", " A")])
    finally:
        stop_server("evaltest")
    with pytest.raises(EndpointError, match="not reachable"):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "dbg", progress=False).generate(
            [GenerateRequest(prompt="hi", max_new_tokens=2)])


@pytest.mark.e2e
def test_jobs_evaluate_end_to_end_writes_reports(debug_smollm2, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "jobs.evaluate", "--model", str(debug_smollm2), "--model", str(debug_smollm2),
           "--tasks", "arc_easy,hellaswag,piqa,openbookqa,mmlu,gsm8k", "--limit", "2", "--workers", "1",
           "--gen-kwargs", "max_gen_toks=16", "--output", str(out), "--set", "eval.progress=false"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "results.json").read_text())
    labels = list(rep["results"])
    assert labels == ["hf", "hf-2"]
    res = rep["results"]["hf"]
    assert res["mmlu"]["n"] == 2 * 57 and len(res["mmlu"]["subtasks"]) == 57
    assert res["arc_easy"]["n"] == 2 and "acc_norm_stderr" in res["arc_easy"]["metrics"]
    assert "exact_match,flexible-extract" in res["gsm8k"]["metrics"]
    assert rep["results"]["hf"]["arc_easy"]["metrics"] == rep["results"]["hf-2"]["arc_easy"]["metrics"]
    assert rep["config"]["limit"] == 2 and rep["versions"]["mmlu_anatomy"] == "2.0"
    summary = (out / "summary.md").read_text()
    assert "| mmlu | acc | 114 |" in summary and "| hf | hf-2 |" in summary.splitlines()[0]
    assert (out / "summary.csv").read_text().startswith("task,metric,n,hf,hf-2")
    assert (out / "results.png").stat().st_size > 1000
    gs = [json.loads(x) for x in (out / "samples_hf_gsm8k.jsonl").read_text().splitlines()]
    assert len(gs) == 2 and {"resps", "filtered_resps", "target"} <= set(gs[0])
    # a bad task name: a clear error naming it, exit code 2, no traceback
    bad = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--model", str(debug_smollm2), "--tasks",
                          "arc_easy,mmlu_pro"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown task 'mmlu_pro'" in bad.stderr and "Traceback" not in bad.stderr


def test_openai_backend_says_what_a_server_without_echo_logprobs_lacks():
    """A server that answers /v1/completions but drops echo + logprobs (as some OpenAI-compatible servers do)
    fails loglikelihood requests with an error naming what is missing; generation still works."""
    import http.server
    import threading

    from actors.eval.backend import GenerateRequest, LoglikelihoodRequest
    from actors.eval.openai_backend import EndpointError, OpenAIBackend

    class NoLogprobs(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            out = {"choices": [{"index": i, "text": " Paris. Question: next", "logprobs": None}
                               for i in range(len(prompts))]}
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoLogprobs)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        b = OpenAIBackend(f"http://127.0.0.1:{srv.server_address[1]}/v1", "m", progress=False)
        with pytest.raises(EndpointError, match="echo \\+ logprobs"):
            b.loglikelihood([LoglikelihoodRequest("The capital of France is", " Paris")])
        # generation needs no logprobs; `until` cuts the text as lm-eval's does
        assert b.generate([GenerateRequest(prompt="Q: capital?\nA:", stop=["Question:"])]) == [" Paris. "]
    finally:
        srv.shutdown()
