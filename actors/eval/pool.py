"""Backends around backends: a pool of eval workers, and a request cache an interrupted run resumes from.

`WorkerPool` answers the three request kinds by sharding them over eval-worker actors that each loaded the
model once. Requests that share a context stay together (one worker computes the context once), shards are
cut from the length-sorted list and handed to whichever worker is free, and the answers come back in request
order, so a task never knows how many workers there were.

`CachedBackend` keys each request by its content and appends every answered shard to a JSONL file: a rerun
after an interruption only computes what is missing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from actors.eval.backend import GenerateRequest, LoglikelihoodRequest, ModelBackend, RollingRequest, _progress


def _ctx_key(req) -> str:
    c = req.context
    return c if isinstance(c, str) else json.dumps(c, sort_keys=True, ensure_ascii=False)


def _size(req) -> int:
    if isinstance(req, LoglikelihoodRequest):
        return len(_ctx_key(req)) + len(req.continuation)
    if isinstance(req, RollingRequest):
        return len(req.text) if req.text is not None else 4 * len(req.token_ids)
    return len(req.prompt or json.dumps(req.messages)) + 4 * req.max_new_tokens


def shards(requests: list, kind: str, target: int) -> list[list[int]]:
    """Request indices cut into shards of about `target` requests: same-context requests in one shard, and
    contexts in text order, so a few-shot prompt's docs (one MMLU subject) land together and share their
    exemplars' computation in the worker; the shards come back largest first (the slowest start first, and an
    out-of-memory shows at once)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        key = _ctx_key(r) if kind == "loglikelihood" else str(i)
        groups.setdefault(key, []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: kv[0]) if kind == "loglikelihood" else list(groups.items())
    out, cur = [], []
    for _, g in ordered:
        cur.extend(g)
        if len(cur) >= target:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return sorted(out, key=lambda idx: -sum(_size(requests[i]) for i in idx))


class WorkerPool(ModelBackend):
    """Requests sharded over eval-worker actors (each has `loglikelihood`, `loglikelihood_rolling`,
    `generate`), at most two shards in flight per worker. A worker that dies (its actor is gone) is replaced by
    `spawn()` when given, else dropped, and its shards go to the next free worker: each shard is retried up to
    `max_retries` times, and the answers are those an undisturbed run gives (a shard's answers do not depend on
    which worker computed it)."""

    def __init__(self, workers: list, name: str, batch_size: int = 16, max_num_seqs: int = 32,
                 progress: bool = True, spawn=None, max_retries: int = 2, log=print):
        self.workers, self.name, self.progress = list(workers), name, progress
        self.batch_size, self.max_num_seqs = batch_size, max_num_seqs
        self.spawn, self.max_retries, self.log = spawn, max_retries, log
        self.retries = 0

    def _run(self, kind: str, requests: list) -> list:
        import ray

        if not requests:
            return []
        if kind == "generate":  # a shard keeps one engine's batch full, and every worker gets one
            target = max(1, min(2 * self.max_num_seqs, -(-len(requests) // len(self.workers))))
        else:  # several forward batches per shard (rows pack better), ~4 shards per worker to balance the end
            target = max(4 * self.batch_size, len(requests) // (4 * len(self.workers)) + 1)
        todo = shards(requests, kind, target)
        todo.reverse()  # pop() takes the longest first
        out: list = [None] * len(requests)
        inflight: dict = {}
        bar = _progress(None, True, f"{kind} x{len(self.workers)}", total=len(requests)) \
            if self.progress and len(requests) > 1 else None
        dead: set[int] = set()
        tries: dict[tuple, int] = {}

        def submit(w: int) -> None:
            idx = todo.pop()
            actor = self.workers[w]
            ref = getattr(actor, kind).remote([requests[i] for i in idx])
            inflight[ref] = (w, idx, actor)

        for _ in range(2):  # round robin: the longest shards go to different workers
            for w in range(len(self.workers)):
                if todo:
                    submit(w)
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1)
            w, idx, actor = inflight.pop(done[0])
            try:
                answers = ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                self._lost(w, idx, actor, e, dead, tries)
                todo.append(idx)  # the next submit takes it
                live = [v for v in range(len(self.workers)) if v not in dead]
                if not live:
                    raise RuntimeError(f"{self.name}: every eval worker died (last: {e})") from e
                busy = {v for v, _, _ in inflight.values()}
                for v in [v for v in live if v not in busy] or live[:1]:
                    if todo:
                        submit(v)
                continue
            for i, res in zip(idx, answers):
                out[i] = res
            if bar is not None:
                bar.update(len(idx))
            if todo and w not in dead:
                submit(w)
        if bar is not None:
            bar.close()
        return out

    def _lost(self, w: int, idx: list[int], actor, err: Exception, dead: set[int], tries: dict) -> None:
        """Worker `w` (`actor`) died holding shard `idx`: replace it (or drop it), once however many shards it
        held, and count the shard's retry."""
        key = tuple(idx)
        tries[key] = tries.get(key, 0) + 1
        if tries[key] > self.max_retries:
            raise RuntimeError(f"{self.name}: a shard of {len(idx)} requests failed {tries[key]} times, its "
                               f"workers dying each time (last: {err}); see the eval worker logs") from err
        self.retries += 1
        if self.workers[w] is not actor:  # already replaced when its other shard failed
            what = "already replaced"
        elif self.spawn is not None:
            self.workers[w] = self.spawn()
            what = "replaced"
        else:
            dead.add(w)
            what = "dropped"
        self.log(f"[eval] {self.name}: worker {w} died ({type(err).__name__}); {what}, its shard of {len(idx)} "
                 "requests retried")

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[tuple[float, bool]]:
        return self._run("loglikelihood", requests)

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[tuple[float, int]]:
        return self._run("loglikelihood_rolling", requests)

    def generate(self, requests: list[GenerateRequest]) -> list[str]:
        return self._run("generate", requests)


class CachedBackend(ModelBackend):
    """Answers from `path` (JSONL of {"key", "result"}) where the same model was asked the same request;
    the rest from `inner`, `chunk` requests at a time, each chunk appended as soon as it is answered."""

    def __init__(self, inner: ModelBackend, path: str | Path, model_key: str, chunk: int = 1024):
        self.inner, self.path, self.model_key, self.chunk = inner, Path(path), model_key, chunk
        self.name = getattr(inner, "name", "backend")
        self.cache: dict[str, object] = {}
        self.hits = 0
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.cache[rec["key"]] = rec["result"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by the interruption: that request is computed again

    def _key(self, kind: str, req) -> str:
        blob = json.dumps([self.model_key, kind, dataclasses.asdict(req)], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _run(self, kind: str, requests: list, fn) -> list:
        keys = [self._key(kind, r) for r in requests]
        miss = [i for i, k in enumerate(keys) if k not in self.cache]
        self.hits += len(requests) - len(miss)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for a in range(0, len(miss), self.chunk):
            part = miss[a:a + self.chunk]
            res = fn([requests[i] for i in part])
            with open(self.path, "a", encoding="utf-8") as f:
                for i, r in zip(part, res):
                    self.cache[keys[i]] = r
                    f.write(json.dumps({"key": keys[i], "result": r}, ensure_ascii=False) + "\n")
        out = [self.cache[k] for k in keys]
        return [tuple(r) if isinstance(r, list) else r for r in out]

    def loglikelihood(self, requests):
        return self._run("loglikelihood", requests, self.inner.loglikelihood)

    def loglikelihood_rolling(self, requests):
        return self._run("loglikelihood_rolling", requests, self.inner.loglikelihood_rolling)

    def generate(self, requests):
        return self._run("generate", requests, self.inner.generate)
