"""Job drivers: one per stage (`python -m jobs.<stage>`) and `python -m jobs.pipeline` chaining all six."""

import cluster  # noqa: E402,F401 - first: sets the local-Ray environment before anything imports ray
