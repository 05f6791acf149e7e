"""The import rules of fullchain, checked on the source (no Ray, no imports of our code: `ast` only).

Every module under actors/, jobs/, cluster/ and kernels/ is parsed and *every* import statement is collected,
module level or inside a function (a deferred import is still a dependency). The rules:

0. Every import of ours names an existing module (`from pkg import name`: pkg exists).
1. Stages never import each other. Stage packages: actors.data, actors.train, actors.eval, actors.serve,
   actors.agent. Shared packages, importable by every stage: actors.model, actors.engine (the serving engine),
   actors.common, actors.tooltask (the one contract module), and the `actors` package itself. A shared package
   never imports a stage. Every module under actors/ must be classified here (a new package is added to STAGES
   or SHARED on purpose).
2. Direction: kernels imports nothing of ours (actors, jobs, cluster); actors never imports jobs; cluster imports
   none of actors, jobs, kernels; actors imports from cluster only `cluster.hardware` (the one dtype decision),
   and only as that module (`from cluster import data_root` imports the package and is refused).
3. kernels is imported only by model, loss and engine code: KERNEL_IMPORTERS below (packages or single modules).
4. Environment variables are touched only in cluster/: any use of `os.environ` / `os.getenv` / `os.putenv` /
   `os.unsetenv`, or importing `environ` / `getenv` from os, elsewhere fails (reads and writes alike:
   everything else receives plain values from cluster/).
5. No import cycle among our modules, over the imports that run when a module is imported: module-level
   statements, including those under module-level `if` / `try`, but not `if TYPE_CHECKING:` blocks and not
   imports inside functions or classes' methods. A function-level import is the sanctioned way to defer a
   dependency; it runs after every module involved has finished initialising, so it cannot see a half-built
   module. (Rules 1-3 still apply to function-level imports.) `from pkg import name` counts as an import of
   the module pkg.name when that is one of our modules, else of pkg.
6. No silent broad except: a bare `except:`, `except Exception` or `except BaseException` (alone or in a
   tuple) whose body only discards the error: `pass`, `continue`, `break`, `...`, a docstring, or a `return` of
   nothing / a constant / a plain name. Count it, log it, re-raise it, or catch the specific exception.

Every violation is listed (file:line and why) in one failure.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("actors", "jobs", "cluster", "kernels")

STAGES = ("actors.data", "actors.train", "actors.eval", "actors.serve", "actors.agent")
SHARED = ("actors.model", "actors.engine", "actors.common", "actors.tooltask")
ACTORS_MAY_IMPORT_FROM_CLUSTER = ("cluster.hardware",)
# model code, loss code, engine code: the only importers of kernels (a package covers its modules)
KERNEL_IMPORTERS = ("actors.model", "actors.engine", "actors.train.losses")
ENV_ATTRS = {"environ", "getenv", "putenv", "unsetenv", "environb", "getenvb"}
BROAD = {"Exception", "BaseException"}


def _within(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def _first(mod: str, pkgs) -> str | None:
    return next((p for p in pkgs if _within(mod, p)), None)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_pkg: bool
    # (line, imported module as written/resolved, module level?)
    imports: list[tuple[int, str, bool]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return str(self.path.relative_to(REPO))


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _collect_imports(mod: Module, ours: set[str]) -> None:
    def resolve_from(node: ast.ImportFrom) -> list[str]:
        if node.level:
            base = mod.name.split(".") if mod.is_pkg else mod.name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            pkg = ".".join(base + ([node.module] if node.module else []))
        else:
            pkg = node.module or ""
        out = []
        for a in node.names:
            sub = f"{pkg}.{a.name}"
            out.append(sub if sub in ours else pkg)
        return out

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                mod.imports += [(child.lineno, a.name, top) for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                mod.imports += [(child.lineno, m, top) for m in resolve_from(child)]
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for n in child.body:
                    visit(ast.Module(body=[n], type_ignores=[]), False)
                for n in child.orelse:
                    visit(ast.Module(body=[n], type_ignores=[]), top)
            else:  # class bodies, module-level if/try/with run at import time
                visit(child, top)

    visit(mod.tree, True)
    mod.imports = list(dict.fromkeys(mod.imports))  # `from a import b, c` of one module: one entry


def load_modules() -> dict[str, Module]:
    mods = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name, is_pkg = _module_name(path)
            mods[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)), is_pkg)
    ours = set(mods)
    for m in mods.values():
        _collect_imports(m, ours)
    return mods


def _ours(target: str) -> str | None:
    top = target.split(".")[0]
    return top if top in ROOTS else None


# ------------------------------------------------------------------------------------------------ rules


def import_violations(mods: dict[str, Module]) -> list[str]:
    out = []
    for m in mods.values():
        src_root = m.name.split(".")[0]
        if src_root == "actors" and m.name != "actors" and not _first(m.name, STAGES + SHARED):
            out.append(f"{m.where}:1: module {m.name} is in no stage or shared package: add its package to "
                       "STAGES or SHARED in tests/test_layering.py")
        for line, target, _ in m.imports:
            dst_root = _ours(target)
            if dst_root is None:
                continue
            at = f"{m.where}:{line}: {m.name} imports {target}"
            if target not in mods:
                out.append(f"{at}: no such module of ours (moved or renamed?)")
            # 1. stages
            src_stage, dst_stage = _first(m.name, STAGES), _first(target, STAGES)
            if dst_stage and src_stage and src_stage != dst_stage:
                out.append(f"{at}: stage {src_stage} imports stage {dst_stage} (move the shared part to "
                           "actors.model / actors.engine / actors.common, or pass it in from jobs/)")
            if dst_stage and _first(m.name, SHARED):
                out.append(f"{at}: shared package {_first(m.name, SHARED)} imports stage {dst_stage}")
            # 2. direction
            if src_root == "kernels" and dst_root != "kernels":
                out.append(f"{at}: kernels imports nothing of ours")
            if src_root == "actors" and dst_root == "jobs":
                out.append(f"{at}: actors never imports jobs")
            if src_root == "cluster" and dst_root in ("actors", "jobs", "kernels"):
                out.append(f"{at}: cluster imports none of actors, jobs, kernels")
            if src_root == "actors" and dst_root == "cluster" and target not in ACTORS_MAY_IMPORT_FROM_CLUSTER:
                out.append(f"{at}: actors import from cluster only {', '.join(ACTORS_MAY_IMPORT_FROM_CLUSTER)} "
                           "(take paths and settings as arguments; jobs/ reads them from cluster)")
            # 3. kernels
            if dst_root == "kernels" and src_root != "kernels" and not _first(m.name, KERNEL_IMPORTERS):
                out.append(f"{at}: kernels are imported only by {', '.join(KERNEL_IMPORTERS)} (go through the model)")
    return out


def env_violations(mods: dict[str, Module]) -> list[str]:
    out = []
    for m in mods.values():
        if m.name.split(".")[0] == "cluster":
            continue
        for node in ast.walk(m.tree):
            hit = None
            if isinstance(node, ast.Attribute) and node.attr in ENV_ATTRS and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                hit = f"os.{node.attr}"
            elif isinstance(node, ast.ImportFrom) and node.module == "os" and \
                    any(a.name in ENV_ATTRS for a in node.names):
                hit = "from os import " + ", ".join(a.name for a in node.names if a.name in ENV_ATTRS)
            if hit:
                out.append(f"{m.where}:{node.lineno}: {hit}: only cluster/ touches environment variables "
                           "(add the variable to cluster/env.py Settings and pass the value in)")
    return out


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a self-loop)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def cycle_violations(mods: dict[str, Module]) -> list[str]:
    graph: dict[str, set[str]] = defaultdict(set)
    lines: dict[tuple[str, str], int] = {}
    for m in mods.values():
        for line, target, top in m.imports:
            if top and target in mods and target != m.name:
                graph[m.name].add(target)
                lines.setdefault((m.name, target), line)
    out = []
    for comp in _sccs(graph):
        members = set(comp)
        edges = [f"{mods[a].where}:{lines[a, b]} ({a} -> {b})"
                 for a in comp for b in sorted(graph[a] & members)]
        out.append(f"import cycle among {', '.join(comp)}: " + "; ".join(edges))
    return out


def _broad(t: ast.expr | None) -> bool:
    if t is None:
        return True
    if isinstance(t, ast.Tuple):
        return any(_broad(e) for e in t.elts)
    name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else None
    return name in BROAD


def _discards(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Pass, ast.Continue, ast.Break)):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):  # `...` or a string
        return True
    if isinstance(stmt, ast.Return):
        return stmt.value is None or isinstance(stmt.value, (ast.Constant, ast.Name))
    return False


def except_violations(mods: dict[str, Module]) -> list[str]:
    out = []
    for m in mods.values():
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ExceptHandler) and _broad(node.type) and all(map(_discards, node.body)):
                what = "bare except" if node.type is None else f"except {ast.unparse(node.type)}"
                out.append(f"{m.where}:{node.lineno}: {what} that drops the error "
                           f"({ast.unparse(node.body[0]).splitlines()[0]}): count it, log it, re-raise it or "
                           "catch the specific exception")
    return out


# ------------------------------------------------------------------------------------------------ tests


def test_the_checker_sees_what_it_should():
    """The rules on small sources, so a silently broken checker cannot pass the tree."""
    src = {
        "actors/eval/x.py": "import os\nfrom actors.serve import engine\n"
                            "def f():\n    from jobs import runner\n    return os.environ.get('A')\n"
                            "try:\n    pass\nexcept Exception:\n    pass\n",
        "actors/serve/engine.py": "from ..eval import x\nimport kernels.rmsnorm\nfrom cluster import hardware\n"
                                  "from cluster import data_root\n",
        "actors/model/m.py": "import kernels\nfrom typing import TYPE_CHECKING\n"
                             "if TYPE_CHECKING:\n    from actors.eval import x\n",
        "kernels/k.py": "from actors.model import m\ntry:\n    import triton\nexcept Exception:\n    HAVE = False\n",
        "cluster/c.py": "import os\nx = os.environ\ntry:\n    f()\nexcept (ValueError, BaseException):\n"
                        "    return None\n",
        "actors/common/y.py": "import actors.gone\nfrom actors.common import nothing_here\n",
        **{f: "" for f in ("cluster/__init__.py", "cluster/hardware.py", "kernels/__init__.py", "kernels/rmsnorm.py",
                           "jobs/__init__.py", "jobs/runner.py", "actors/common/__init__.py")},
    }
    mods = {}
    for rel, text in src.items():
        path = REPO / rel
        name, is_pkg = _module_name(path)
        mods[name] = Module(name, path, ast.parse(text), is_pkg)
    for m in mods.values():
        _collect_imports(m, set(mods))
    got = "\n".join(import_violations(mods) + env_violations(mods) + cycle_violations(mods)
                    + except_violations(mods))
    assert "actors/eval/x.py:2: actors.eval.x imports actors.serve.engine: stage actors.eval imports stage " \
           "actors.serve" in got
    assert "actors/eval/x.py:4" in got and "actors never imports jobs" in got
    assert "actors/eval/x.py:5: os.environ" in got
    assert "actors/eval/x.py:8: except Exception" in got
    assert "actors/serve/engine.py:1: actors.serve.engine imports actors.eval.x: stage" in got  # relative import
    assert "actors/serve/engine.py:2" in got and "kernels are imported only by" in got
    assert "actors/serve/engine.py:3" not in got                                  # cluster.hardware is allowed
    assert "actors/serve/engine.py:4: actors.serve.engine imports cluster: actors import from cluster only" in got
    assert "actors/model/m.py:1" not in got                                       # model code may use kernels
    assert "actors/model/m.py:4: actors.model.m imports actors.eval.x: shared package" in got  # rule 1 sees it
    assert "kernels/k.py:1: kernels.k imports actors.model.m: kernels imports nothing of ours" in got
    assert "kernels/k.py:4" not in got                                            # a flag set: not silent
    assert "cluster/c.py:2" not in got                                            # cluster may read the env
    assert "cluster/c.py:5: except (ValueError, BaseException)" in got
    assert "actors/common/y.py:1: actors.common.y imports actors.gone: no such module of ours" in got
    assert "actors/common/y.py:2" not in got                                      # a name from an existing package
    assert got.count("no such module") == 1
    # eval.x -> serve.engine -> eval.x at module level; model.m -> eval.x only under TYPE_CHECKING
    assert "import cycle among actors.eval.x, actors.serve.engine" in got
    assert "actors.model.m ->" not in got


def test_layering():
    mods = load_modules()
    assert {"actors.tooltask", "actors.model.transformer", "jobs.runner", "cluster.env"} <= set(mods)
    problems = import_violations(mods) + env_violations(mods) + cycle_violations(mods) + except_violations(mods)
    assert not problems, f"{len(problems)} layering violation(s):\n  " + "\n  ".join(problems)
