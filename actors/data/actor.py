"""Ray actor shell of the data stage; the logic lives in stage.py (Ray Data) and the Ray-free modules."""
from __future__ import annotations

from pathlib import Path

import ray

from actors.common.config import from_dict
from actors.data.config import DataConfig


@ray.remote(num_cpus=1)
class DataWorker:
    """Runs the data stage inside the cluster, so a job driver only holds a handle and the result dict."""

    def run(self, cfg_dict: dict, out_dir: str, data_root: str) -> dict:
        from actors.data.stage import run_data_stage

        cfg = from_dict(DataConfig, cfg_dict, prefix="data")
        return run_data_stage(cfg, Path(out_dir), Path(data_root))

    def ping(self) -> str:
        return "ok"
