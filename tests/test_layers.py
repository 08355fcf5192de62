"""The package's layers: imports point one way, and no import hides inside a function.

core          split_workbench.*  (split, protocol, parties, wire, transforms, observation, ...)
plugins       split_workbench.attacks.*, split_workbench.defenses.*   -> the core only
orchestration split_workbench.orchestration.*                          -> everything

The test parses every module's source (nothing is imported), resolves each import to a
module name and fails on an upward import, on an import of one plugin family from the
other, on an import of the pre-namespace names (``workbench``, ``attacks``, ``defenses``)
anywhere in the repository, and on an import inside a function other than an optional
dependency's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"split_workbench": ROOT / "workbench", "split_workbench.attacks": ROOT / "attacks",
            "split_workbench.defenses": ROOT / "defenses"}
# Optional dependencies: imported where they are used, so that the package works without them.
OPTIONAL = {"ray", "grpc", "torch", "IPython", "pandas"}
OLD_NAMES = {"workbench", "attacks", "defenses"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for f in sorted(folder.rglob("*.py")):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def layer(module: str) -> tuple[int, str]:
    """(rank, family): 0 core, 1 a plugin family, 2 the orchestration."""
    for fam in ("attacks", "defenses"):
        if module == f"split_workbench.{fam}" or module.startswith(f"split_workbench.{fam}."):
            return 1, fam
    if module == "split_workbench.orchestration" or module.startswith("split_workbench.orchestration."):
        return 2, "orchestration"
    return 0, "core"


def _imports(module: str, path: Path):
    """``(target module, line, inside a function)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = []

    def visit(node, in_fn):
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_fn) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module
                out.append((target, child.lineno, in_fn))
                for a in child.names:  # `from pkg import submodule`
                    out.append((f"{target}.{a.name}", child.lineno, in_fn))
            visit(child, fn)

    visit(tree, False)
    return out


def _resolve(name: str, known: set[str]) -> str | None:
    """The package module that ``name`` names (or names something in), if any."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def test_every_module_is_found():
    mods = _modules()
    assert {"split_workbench.protocol", "split_workbench.attacks.base", "split_workbench.defenses.base",
            "split_workbench.orchestration.cli", "split_workbench.observation"} <= set(mods)


def test_imports_point_one_way():
    mods = _modules()
    known = set(mods)
    bad = []
    for mod, path in mods.items():
        rank, fam = layer(mod)
        for target, line, _ in _imports(mod, path):
            if target.split(".")[0] in OLD_NAMES:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the pre-namespace name {target!r}")
                continue
            hit = _resolve(target, known)
            if hit is None:
                continue
            t_rank, t_fam = layer(hit)
            if t_rank > rank or (t_rank == rank == 1 and t_fam != fam):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({fam}) imports {hit} ({t_fam})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_import_inside_a_function():
    bad = []
    for mod, path in _modules().items():
        for target, line, in_fn in _imports(mod, path):
            if in_fn and target.split(".")[0] not in OPTIONAL:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
    assert not bad, "imports inside functions (only optional dependencies may be imported lazily):\n" + "\n".join(
        sorted(set(bad)))


@pytest.mark.parametrize("folder", ["tests", "papers", "notebooks", "bench", "scripts"])
def test_outside_code_uses_the_namespace(folder):
    bad = []
    for f in sorted((ROOT / folder).rglob("*.py")):
        for target, line, _ in _imports("outside", f):
            if target and target.split(".")[0] in OLD_NAMES:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {target!r}; use split_workbench.{target}")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_an_upward_import(tmp_path):
    """The test itself can fail: a core module importing a plugin is reported."""
    f = tmp_path / "bad.py"
    f.write_text("import jax\nfrom split_workbench.attacks import rmle\n\ndef g():\n    from split_workbench import split\n")
    imps = _imports("split_workbench.bad", f)
    known = set(_modules())
    targets = {(_resolve(t, known), in_fn) for t, _, in_fn in imps}
    assert ("split_workbench.attacks.rmle", False) in targets and ("split_workbench.split", True) in targets
    assert layer("split_workbench.attacks.rmle") == (1, "attacks") > layer("split_workbench.bad")
