"""The house's import rules: imports point down the layers, the viewer, export and debugger never reach into
collation, and stage configs (what `run` and the CLI import first) load no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "saescope"

LAYERS = [
    {"errors", "lazy", "io", "validate", "distributed", "stages"},
    {"models", "config", "corpus"},
    {"sae", "store", "records", "compact_records", "activations"},
    {"units", "sources"},
    {"capture", "train", "collate"},
    {"interp", "debug", "graph"},
    {"explore", "viewer", "export"},
    {"run", "cli", "__main__"},
]
"""Bottom to top (docs/design.md): a module may import from its own layer or the layers below."""
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def part_of(path: Path) -> str:
    """src/saescope/viewer/server.py → 'viewer'; src/saescope/units.py → 'units'."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> set[str]:
    """The saescope parts a file imports (at top level, inside functions or under TYPE_CHECKING alike)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "saescope" and len(parts) > 1:
                out.add(parts[1])
    return out


def edges() -> list[tuple[str, str, str]]:
    """(file, its part, the part it imports) for every import between parts of saescope."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "__init__.py":  # the package root re-exports a few names lazily
            continue
        me = part_of(path)
        out += [(str(path.relative_to(SRC)), me, other) for other in imports(path) if other != me]
    return out


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(p) for p in SRC.rglob("*.py") if p != SRC / "__init__.py"}
    assert parts <= set(LAYER), f"add {sorted(parts - set(LAYER))} to LAYERS (and to docs/design.md)"


def test_imports_point_down_the_layers():
    up = [f"{f} imports saescope.{other}" for f, me, other in edges() if LAYER.get(other, -1) > LAYER[me]]
    assert not up, "imports pointing up the layers:\n" + "\n".join(up)


def test_viewer_export_and_debug_do_not_reach_into_collation():
    into = [f"{f} imports saescope.collate" for f, me, other in edges()
            if me in ("viewer", "explore", "export", "debug") and other == "collate"]
    assert not into, "\n".join(into)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: an import from a lower layer into a higher one is seen (also inside a function)."""
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from saescope.viewer.server import create_app\n")
    assert imports(f) == {"viewer"} and LAYER["viewer"] > LAYER["store"]


def test_configs_and_run_import_no_torch():
    """Every stage config, `saescope.run` and the CLI's dispatcher import without torch (or fastapi)."""
    configs = sorted(f"saescope.{p.parent.name}.config" for p in SRC.glob("*/config.py"))
    assert len(configs) >= 8
    code = ("import sys\n" + "".join(f"import {m}\n" for m in [*configs, "saescope.run", "saescope.cli"])
            + "heavy = sorted(m for m in ('torch', 'fastapi', 'transformers') if m in sys.modules)\n"
            + "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


STAGES = ("capture", "store", "train", "collate", "interp", "viewer", "debug", "graph")


def test_every_stage_has_one_face():
    """Each stage: a light `config.py` and `from saescope.<stage> import run`, a function returning a dataclass
    named <Something>Result (what it wrote, counts, metrics)."""
    import dataclasses
    import importlib
    import inspect

    for stage in STAGES:
        assert (SRC / stage / "config.py").is_file(), stage
        package = importlib.import_module(f"saescope.{stage}")
        name = inspect.signature(package.run).return_annotation.removesuffix(" | None")  # collate: None off rank 0
        assert name.endswith("Result") and dataclasses.is_dataclass(getattr(package, name)), (stage, name)


def test_a_lazy_name_keeps_its_meaning_once_its_module_of_the_same_name_is_imported():
    """graph.prune is a function in the module graph/prune.py: importing the module (as graph/attribute.py does)
    binds it on the package, which must not turn `from saescope.graph import prune` into the module."""
    import importlib
    import types

    importlib.import_module("saescope.graph.prune")
    from saescope.graph import prune

    assert not isinstance(prune, types.ModuleType) and prune.__name__ == "prune"
    import saescope.capture as capture

    assert capture.run.__module__ == "saescope.capture.run_capture" and "run" in capture.__all__
