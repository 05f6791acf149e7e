"""Connecting to Ray, runtime env, storage and data roots.

This package is the only place in fullchain that reads environment variables; everything else receives
plain values from here.
"""
from cluster.env import Settings, settings
from cluster.connect import cluster_info, compute_cpus, connect, runtime_env, shutdown
from cluster.storage import Storage, data_root, model_cache, storage_root

__all__ = [
    "Settings", "settings", "connect", "shutdown", "runtime_env", "cluster_info", "compute_cpus",
    "Storage", "data_root", "model_cache", "storage_root",
]
