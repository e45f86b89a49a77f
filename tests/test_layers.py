"""Imports go one way, down the layers README.md's Architecture section names: a module may
import its own layer and the ones below, never one above. Read from the source with ``ast``
(every import, including those inside functions), so nothing is imported to check."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fspd"

# Highest first. A module belongs to the first layer one of whose prefixes it matches; every
# other fspd module is in the foundation (blocks, retry, progress, jobs, config, aws, …).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("commands and daemon", ("fspd.cli", "fspd.__main__", "fspd.commands", "fspd.daemon")),
    ("fleet", ("fspd.fleet",)),
    ("run and operations", ("fspd.run", "fspd.lineage")),
    ("pipeline and endpoints", ("fspd.pipeline", "fspd.endpoints")),
    ("archive format", ("fspd.archive",)),
    ("job context and endpoint contract", ("fspd.context", "fspd.endpoint")),
    ("foundation", ("fspd",)),
]
# The emulator stands apart: it imports no transfer code, only these.
EMULATOR_MAY_IMPORT = ("fspd.emulator", "fspd.log", "fspd.loop")


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(_matches(module, p) for p in prefixes):
            return rank
    raise AssertionError(f"{module} is not an fspd module")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported fspd module) for every import in ``path``; ``from fspd.x import y``
    counts as importing ``fspd.x.y`` when that is a module, else ``fspd.x``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if _matches(a.name, "fspd")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not _matches(base, "fspd"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    ROOT / Path(*sub.split(".")) / "__init__.py").exists()
                found.append((node.lineno, sub if is_module else base))
    return found


def all_modules() -> list[tuple[Path, str]]:
    return [(p, module_name(p)) for p in sorted(PACKAGE.rglob("*.py"))]


def upward_imports(modules: list[tuple[Path, str]]) -> list[str]:
    problems = []
    for path, module in modules:
        emulator = _matches(module, "fspd.emulator")
        for line, target in imports_of(path, module):
            where = f"{path.name}:{line}: {module} imports {target}"
            if emulator:
                if not any(_matches(target, p) for p in EMULATOR_MAY_IMPORT):
                    problems.append(f"{where} (the emulator imports no transfer code)")
                continue
            if _matches(target, "fspd.emulator"):
                if layer_of(module) != 0:
                    problems.append(f"{where} (only commands and the daemon start the emulator)")
                continue
            if layer_of(target) < layer_of(module):
                problems.append(f"{where} ({LAYERS[layer_of(module)][0]} is below "
                                f"{LAYERS[layer_of(target)][0]})")
    return problems


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports(all_modules()) == []


def test_archive_imports_nothing_from_endpoints() -> None:
    for path, module in all_modules():
        if _matches(module, "fspd.archive"):
            assert not [t for _, t in imports_of(path, module) if _matches(t, "fspd.endpoints")]


@pytest.mark.parametrize(("source", "expected"), [
    ("from fspd.endpoints.context import JobContext\n", "fspd.endpoints.context"),
    ("from fspd import run\n", "fspd.run"),
    ("import fspd.pipeline\n", "fspd.pipeline"),
    ("def f():\n    from ..endpoints import ebs\n", "fspd.endpoints.ebs"),
])
def test_an_upward_import_is_reported(tmp_path: Path, source: str, expected: str) -> None:
    """The checker itself: an archive module importing upward, however spelled, is found."""
    fake = PACKAGE / "archive" / "_layer_probe.py"  # never written: parsed from tmp_path
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    module = module_name(fake)
    assert [t for _, t in imports_of(probe, module)] == [expected]
    [problem] = upward_imports([(probe, module)])
    assert f"imports {expected} (archive format is below" in problem
