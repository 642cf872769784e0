"""The two halves meet only at the declared contracts: the service imports nothing from
``model/`` but ``model.contracts``, and the contracts import neither TensorFlow nor the rest
of the trainer. Every import counts, those inside functions too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CONTRACTS = "model.contracts"


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``; ``from a import b`` gives a.b,
    so that ``from model import contracts`` reads as model.contracts."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("service"), ids=lambda p: str(p.relative_to(REPO)))
def test_the_service_imports_only_the_contracts_from_model(path: Path) -> None:
    crossing = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for line, module in imports(path)
        if _inside(module, "model") and not _inside(module, CONTRACTS)
    ]
    assert not crossing, crossing


@pytest.mark.parametrize(
    "path", _modules("model/contracts"), ids=lambda p: str(p.relative_to(REPO))
)
def test_the_contracts_import_no_tensorflow_and_no_trainer(path: Path) -> None:
    crossing = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for line, module in imports(path)
        if any(_inside(module, p) for p in ("tensorflow", "keras", "service"))
        or (_inside(module, "model") and not _inside(module, CONTRACTS))
    ]
    assert not crossing, crossing


def test_a_crossing_import_inside_a_function_is_found(tmp_path: Path) -> None:
    source = tmp_path / "route.py"
    source.write_text(
        "from model.contracts import export_format\n"
        "def handler():\n"
        "    from model.training import train\n"
        "    import model.cli.logs\n"
        "    from model import contracts, data\n"
    )
    found = [m for _, m in imports(source) if _inside(m, "model") and not _inside(m, CONTRACTS)]
    assert found == ["model.training.train", "model.cli.logs", "model.data"]
