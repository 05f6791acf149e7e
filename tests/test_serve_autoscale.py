"""Autoscaling of the engine replicas through Ray Serve's `autoscaling_config` from the serve config: under a
bounded load the deployment grows from 1 to 2 replicas, and back to 1 when the load stops (short delays set here)."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from conftest import free_port
from tests.helpers import make_tiny_model

pytestmark = [pytest.mark.ray, pytest.mark.e2e]
APP = "fullchain-autoscale"


def _running() -> int:
    from ray import serve

    dep = serve.status().applications[APP].deployments["LLMServer"]
    return sum(n for state, n in dep.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")


def _wait(pred, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what} not within {timeout_s} s (running replicas: {_running()})")
        time.sleep(0.25)
    return time.monotonic() - t0


def test_replicas_scale_from_1_to_2_under_load_and_back(ray_session, tmp_path_factory):
    from actors.serve.deployment import start_server, stop_server

    tiny = make_tiny_model(tmp_path_factory.getbasetemp())
    url = start_server({"model": str(tiny.dir), "model_name": "auto", "port": free_port(), "num_cpus": 0.5,
                        "max_ongoing_requests": 8, "engine": {"kv_cache_memory": "64MiB"},
                        "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                                        "metrics_interval_s": 0.5, "look_back_period_s": 1,
                                        "upscale_delay_s": 0.5, "downscale_delay_s": 2}}, app_name=APP)
    try:
        assert _running() == 1
        done = 0

        async def load(stop: asyncio.Event):
            nonlocal done

            async def worker(client):
                nonlocal done
                while not stop.is_set():
                    r = await client.post("/v1/completions", json={
                        "model": "auto", "prompt": "To be or not", "max_tokens": 48, "ignore_eos": True})
                    assert r.status_code == 200, r.text
                    done += 1

            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                await asyncio.gather(*(worker(client) for _ in range(8)))  # 8 in flight: 4x the target of 2

        async def main():
            stop = asyncio.Event()
            task = asyncio.create_task(load(stop))
            loop = asyncio.get_running_loop()
            try:
                up = await loop.run_in_executor(None, _wait, lambda: _running() == 2, 90, "scaling up to 2 replicas")
                print(f"scaled up in {up:.1f} s")
            finally:
                stop.set()
                await task

        asyncio.run(main())
        assert done > 0
        down = _wait(lambda: _running() == 1, 90, "scaling back down to 1 replica")
        print(f"scaled down in {down:.1f} s")
        r = httpx.post(f"{url}/v1/completions", json={"model": "auto", "prompt": "hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200  # the remaining replica serves
    finally:
        stop_server(APP)
