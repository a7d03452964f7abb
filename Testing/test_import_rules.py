"""The layering of docs/architecture.md, checked on the source: who may import whom.

- the core proper (`medicosam`, outside `medicosam/effect/`) imports neither the effect's
  application layer, nor the training package, nor Slicer / Qt / VTK;
- the effect's application layer (`medicosam/effect/`) is Slicer-free too, and never imports training;
- the training package never imports the effect layer, the Slicer files or Slicer / Qt.

Every import statement counts, also those inside functions (the core imports lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "MedicoSAMSlicer" / "medicosam"
TRAINING = ROOT / "MedicoSAMTraining" / "medicosam_training"
SLICER_MODULES = ("slicer", "qt", "ctk", "vtk", "mrml", "SegmentEditorEffects", "SegmentEditorMedicoSAMLib")


def _get_package(path: Path) -> str:
    base = CORE.parent if CORE in path.parents else TRAINING.parent
    return ".".join(path.relative_to(base).parts[:-1])


def get_imports(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative imports resolved."""
    package = _get_package(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield node.lineno, module
            yield from ((node.lineno, f"{module}.{alias.name}") for alias in node.names)


def _is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _get_violations(files, forbidden) -> list:
    return [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in files
            for line, module in get_imports(path) if any(_is_under(module, prefix) for prefix in forbidden)]


def test_import_scanner_sees_relative_and_lazy_imports():
    cli = {module for _, module in get_imports(CORE / "cli.py")}
    assert {"medicosam.errors", "medicosam.segment.SegmentRequest"} <= cli  # the second inside a function
    download = {module for _, module in get_imports(CORE / "models" / "download.py")}
    assert "medicosam.errors" in download and "medicosam.models.registry" in download


@pytest.mark.parametrize("layer, files, forbidden", [
    ("core proper", [p for p in CORE.rglob("*.py") if CORE / "effect" not in p.parents],
     ("medicosam.effect", "medicosam_training", *SLICER_MODULES)),
    ("effect application layer", list((CORE / "effect").rglob("*.py")), ("medicosam_training", *SLICER_MODULES)),
    ("training", list(TRAINING.rglob("*.py")), ("medicosam.effect", *SLICER_MODULES)),
])
def test_layers_import_only_what_they_may(layer, files, forbidden):
    assert files, layer
    assert _get_violations(files, forbidden) == [], layer


def test_only_the_server_imports_its_web_framework():
    outside = [p for p in CORE.rglob("*.py") if CORE / "server" not in p.parents]
    assert _get_violations(outside, ("fastapi", "uvicorn", "starlette")) == []
