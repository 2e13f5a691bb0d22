"""The package's shape, read from the source with ast (nothing imported): the stage processes in
evstream/stages/, nothing below commands/ importing from it, no import cycles; and the source's
typed options carrying every source option the command line has."""

from __future__ import annotations

import argparse
import ast
import pickle
from dataclasses import fields
from pathlib import Path

import pytest

from evstream.config import PipelineConfig, SourceConfig
from evstream.sources.options import SourceOptions

PACKAGE = Path(__file__).resolve().parents[1] / "evstream"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runtime_nodes(tree: ast.Module):
    """Every node of the module except what sits under `if TYPE_CHECKING:` (never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _imports(module: str) -> set[str]:
    """The evstream modules `module` imports, at module level or inside functions: for
    `from X import Y`, X.Y where that is a module, else X."""
    def known(name: str) -> str:
        while name not in MODULES:
            name = name.rpartition(".")[0]
        return name

    out = set()
    for node in _runtime_nodes(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            out |= {known(a.name) for a in node.names if a.name.split(".")[0] == "evstream"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "evstream":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else known(node.module))
    out.discard(module)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def test_only_the_commands_import_the_commands():
    allowed = {"evstream.cli"}
    offenders = sorted(f"{m} imports {', '.join(sorted(i for i in deps if _is_commands(i)))}"
                       for m, deps in GRAPH.items()
                       if not _is_commands(m) and m not in allowed
                       and any(_is_commands(i) for i in deps))
    assert offenders == []


def _is_commands(module: str) -> bool:
    return module == "evstream.commands" or module.startswith("evstream.commands.")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_stage_process_is_in_the_stages_package():
    from evstream.pipeline import STAGE_FUNCTIONS

    assert list(STAGE_FUNCTIONS) == ["source", "window", "worker", "viewer", "sink"]
    for name, (module, function) in STAGE_FUNCTIONS.items():
        assert module == f"evstream.stages.{name}" and function == f"{name}_stage"
        tree = ast.parse(MODULES[module].read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    # and nowhere else: stream/ is plumbing, infer/ and viewer/ are libraries
    stage_defs = sorted(m for m, p in MODULES.items()
                        for n in ast.parse(p.read_text()).body
                        if isinstance(n, ast.FunctionDef) and n.name.endswith("_stage")
                        and n.name[:-len("_stage")] in STAGE_FUNCTIONS)
    assert stage_defs == sorted(m for m, _ in STAGE_FUNCTIONS.values())


def test_source_options_carry_every_source_option_of_the_command_line():
    from evstream.commands.common import add_source_args, source_options

    p = argparse.ArgumentParser()
    add_source_args(p)
    dests = {a.dest for a in p._actions} - {"help", "source", "camera"}   # camera: in the spec
    assert dests == {f.name for f in fields(SourceOptions)}

    args = p.parse_args(["x.aedat4", "--roi", "1,2,30,40", "--bad-events", "drop",
                         "--refractory-us", "100", "--width", "64", "--height", "48"])
    opts = source_options(args, "x.aedat4")
    assert opts == SourceOptions(roi=(1, 2, 30, 40), bad_events="drop", refractory_us=100,
                                 width=64, height=48)
    assert opts.reader_options("x.aedat4") == {"width": 64, "height": 48, "bad_events": "drop"}
    assert opts.filter_options() == {"refractory_us": 100, "roi": (1, 2, 30, 40)}
    # it crosses `spawn` inside the pipeline's config
    cfg = PipelineConfig(source=SourceConfig(spec="x.aedat4", options=opts))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg.as_dict()["source"]["options"]["bad_events"] == "drop"


def test_camera_settings_need_a_camera_and_the_serial_goes_to_it():
    from evstream.commands.common import add_source_args, source_options
    from evstream.errors import EvstreamError

    p = argparse.ArgumentParser()
    add_source_args(p)
    with pytest.raises(EvstreamError, match="--exposure-us is a camera setting"):
        source_options(p.parse_args(["x.aedat4", "--exposure-us", "500"]), "x.aedat4")
    opts = source_options(p.parse_args(["--camera", "davis346", "--serial", "S1", "--no-aps"]),
                          "camera:davis346")
    assert opts.reader_options("camera:davis346")["serial"] == "S1"
    assert opts.camera_settings("camera:davis346") == {"aps": False, "serial": "S1"}
    assert "serial" not in opts.camera_settings("camera:davis346?serial=S2")


def test_the_source_stage_opens_with_its_typed_options(tmp_path):
    from evstream.stages.source import open_configured_source

    spec = "synthetic:?seed=1&rate=1e5&duration=0.2&width=64&height=48"
    opts = SourceOptions(roi=(0, 0, 32, 24), polarity="on")
    with open_configured_source(SourceConfig(spec=spec, options=opts, speed=None)) as src:
        ev = [p.events for p in src.packets()]
    n = sum(len(e) for e in ev)
    assert n > 0
    assert all((e["x"] < 32).all() and (e["y"] < 24).all() and (e["p"] == 1).all() for e in ev)
