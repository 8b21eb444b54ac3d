"""The package's layout rules, read from the source: no import cycles, imports at module level, runtime code that
stands alone, short documented modules."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "chatpack"
RUNTIME = ("chatpack.protocol", "chatpack.engine", "chatpack.flavours.onnx_chat.pyfunc_model",
           "chatpack.flavours.onnx_chat.engine_client")
MAX_LINES = 300
# Over the cap on purpose, one concept each (a long module is a smell to look at, not a reason to split a concept):
LONG_MODULES: dict[str, str] = {}
# Where a newcomer finds each stage: the folder, and the function or class that does it (defined there, not imported).
STAGES = {"protocol": "chatpack.protocol.chat_request:parse_request",  # a request parsed
          "engine": "chatpack.engine.batch_loop:BatchLoop",  # a token generated
          "flavours": "chatpack.flavours.onnx_chat.log_model:log_onnx_model",  # a model logged
          "pipeline": "chatpack.pipeline.reuse:find_reusable_run",  # a step reused
          "sources": "chatpack.sources.fetch:fetched_model"}  # a fetched model found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def chatpack_imports(path: Path, top_level_only: bool) -> list[tuple[str, int]]:
    """(module, line) of every ``chatpack`` import; resolved to a module of the package where it names one."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "chatpack":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in MODULES else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "chatpack"]
    return found


def graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in chatpack_imports(path, top_level_only=True) if m != name}
            for name, path in MODULES.items()}


def test_the_package_has_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_package_modules_import_each_other_at_module_level_only():
    """Function-level imports are for optional heavy dependencies (torch, pyspark, onnxruntime_genai), never for
    the package's own modules: those would hide a cycle."""
    late = []
    for name, path in MODULES.items():
        top = set(chatpack_imports(path, top_level_only=True))
        late += [f"{name}:{line} imports {m}" for m, line in chatpack_imports(path, top_level_only=False)
                 if (m, line) not in top]
    assert late == []


@pytest.mark.parametrize("runtime", RUNTIME)
def test_runtime_code_imports_only_runtime_code(runtime):
    """What a logged ONNX model carries must not pull in the server, Spark, evaluation, sources or the builder."""
    members = [n for n in MODULES if n == runtime or n.startswith(runtime + ".")]
    assert members, runtime
    outside = [f"{n} imports {m}" for n in members for m, _ in chatpack_imports(MODULES[n], top_level_only=False)
               if m != "chatpack" and not m.startswith(RUNTIME)]
    assert outside == []


def test_every_module_is_documented_and_short():
    undocumented = [n for n, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))]
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert undocumented == []
    assert {n: lines for n, lines in long.items() if lines > MAX_LINES and n not in LONG_MODULES} == {}
    # an exemption for a module that is short now (or gone) is stale: remove it
    assert {n: long.get(n) for n in LONG_MODULES if long.get(n, 0) <= MAX_LINES} == {}


def test_folder_names_say_where_each_stage_lives():
    """A newcomer finds where a request is parsed, a token generated, a model logged and a step reused."""
    for folder in ("sources", "build", "flavours", "protocol", "engine", "evaluation", "serving", "pipeline"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder
    for folder, target in STAGES.items():
        module, name = target.split(":")
        assert module.startswith(f"chatpack.{folder}."), target
        found = getattr(importlib.import_module(module), name)
        assert callable(found) and found.__module__ == module, target
