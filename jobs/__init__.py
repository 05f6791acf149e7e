"""Job drivers: one per stage (`python -m jobs.<stage>`) and `python -m jobs.pipeline` chaining all six."""
