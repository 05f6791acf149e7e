"""datatrove's side of bench.data_throughput: run inside the venv that bench creates (datatrove[processing], spaCy),
never inside the project's environment; it imports datatrove and the standard library only.

    <venv>/bin/python bench/datatrove_pipeline.py SPEC.json

SPEC: {"html": folder of HTML JSONL parts, "docs": folder of text JSONL parts, "out": work folder, "lid_model":
path of lid.176.ftz, "tasks": 2, "workers": 2, "trafilatura": {...options}, "minhash": {"n_grams", "bands", "rows",
"seed"}, "languages": ["en"], "language_threshold": 0.65}.

The pipeline is datatrove's own blocks, as its FineWeb example chains them:
    stage 1 (tasks ranks): JsonlReader(html) -> Trafilatura -> JsonlReader(docs) -> LanguageFilter
        -> GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter -> JsonlWriter -> MinhashDedupSignature
    stage 2: MinhashDedupBuckets (one task per band), stage 3: MinhashDedupCluster (one task),
    stage 4 (tasks ranks): JsonlReader(stage 1 output) -> MinhashDedupFilter -> JsonlWriter
Prints one JSON line: {"seconds", "kept_ids", "stats"}.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, \
        MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter, \
        LanguageFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    out = Path(spec["out"])
    tasks, workers = int(spec["tasks"]), int(spec["workers"])
    mh = spec["minhash"]
    mcfg = MinhashConfig(n_grams=mh["n_grams"], num_buckets=mh["bands"], hashes_per_bucket=mh["rows"],
                         seed=mh["seed"])
    lang = LanguageFilter(languages=spec["languages"], language_threshold=spec["language_threshold"])
    # the filter has no model-path argument: its model object downloads MODEL_URL into the HF assets cache on
    # first use; an instance attribute (pickled with the pipeline into each worker) points it at the local file
    lang.model.MODEL_URL = str(Path(spec["lid_model"]).resolve())
    common = dict(tasks=tasks, workers=workers, start_method="fork")
    stage1 = LocalPipelineExecutor(pipeline=[
        JsonlReader(spec["html"], glob_pattern="*.jsonl"),
        Trafilatura(**spec["trafilatura"]),
        JsonlReader(spec["docs"], glob_pattern="*.jsonl"),
        lang,
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(),
        JsonlWriter(str(out / "filtered"), compression=None),
        MinhashDedupSignature(output_folder=str(out / "signatures"), config=mcfg),
    ], logging_dir=str(out / "logs" / "1"), **common)
    stage2 = LocalPipelineExecutor(pipeline=[
        MinhashDedupBuckets(input_folder=str(out / "signatures"), output_folder=str(out / "buckets"), config=mcfg),
    ], tasks=mcfg.num_buckets, workers=workers, start_method="fork", logging_dir=str(out / "logs" / "2"))
    stage3 = LocalPipelineExecutor(pipeline=[
        MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove_ids"), config=mcfg),
    ], tasks=1, workers=1, logging_dir=str(out / "logs" / "3"))
    stage4 = LocalPipelineExecutor(pipeline=[
        JsonlReader(str(out / "filtered"), glob_pattern="*.jsonl"),
        MinhashDedupFilter(input_folder=str(out / "remove_ids")),
        JsonlWriter(str(out / "deduped"), compression=None),
    ], logging_dir=str(out / "logs" / "4"), **common)
    stats = {}
    for i, ex in enumerate((stage1, stage2, stage3, stage4), start=1):
        ex.run()
        stats[i] = json.loads((out / "logs" / str(i) / "stats.json").read_text())
    seconds = time.perf_counter() - t0
    kept = [json.loads(line)["id"] for p in sorted((out / "deduped").glob("*.jsonl")) for line in p.open()]
    print(json.dumps({"seconds": seconds, "kept_ids": kept, "stats": stats}))


if __name__ == "__main__":
    main(sys.argv[1])
