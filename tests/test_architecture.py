"""The architecture's rules, checked on the code as it is (README "Architecture").

- import-linter contracts (pyproject.toml, ``[tool.importlinter]``): the harness rooms are layers
  (cli -> report -> run -> quant | devices -> builtin -> core), no module import cycles at any depth,
  ``search`` and ``profiles`` import nothing of ``harness``, ``device_agents`` nothing of the project.
- No module imports another module's private (``_name``) names. grimp finds every import, lazy ones
  inside functions included; only the statement it points at is read, to see which names it takes.

A check that never fails proves nothing: ``test_contracts_fail_on_a_violation`` runs the same
contracts over a copy of the code with a cycle and a wrong-way import added.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "profiles", "search", "device_agents")


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


def test_import_contracts_hold() -> None:
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_contracts_fail_on_a_violation(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("*.onnx", "*.npz", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    # a cycle inside a room, a room importing upwards, and the cost model reaching into the host
    with open(tmp_path / "harness/core/atomic.py", "a") as f:
        f.write("\nfrom harness.core import genome  # deliberate violation\n")
    with open(tmp_path / "harness/core/genome.py", "a") as f:
        f.write("\nfrom harness.core import atomic  # deliberate violation\n")
        f.write("from harness.run import archive  # deliberate violation\n")
    with open(tmp_path / "profiles/fit.py", "a") as f:
        f.write("\nfrom harness.core import errors  # deliberate violation\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = _lint_imports(tmp_path, env)
    assert res.returncode != 0
    assert "3 broken" in res.stdout, res.stdout[-3000:]
    for words in ("harness.core.genome -> harness.run.archive", "No cycles are allowed in harness.core.",
                  "profiles.fit -> harness.core.errors"):
        assert words in res.stdout, words


def _statement_at(path: Path, line: int) -> ast.stmt:
    """The import statement that starts at ``line`` (it may continue over several lines)."""
    lines = path.read_text().splitlines()
    for end in range(line, min(len(lines), line + 60) + 1):
        chunk = "\n".join(lines[line - 1:end]).strip()
        try:
            return ast.parse(chunk).body[0]
        except SyntaxError:
            continue
    raise AssertionError(f"{path}:{line}: no import statement found")


def private_name_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """``file:line: module._name`` for every import of a private name from another module (the
    packages are found on ``sys.path``; their files are read under ``root``)."""
    import grimp

    graph = grimp.build_graph(*packages, cache_dir=None)
    found = []
    for importer in sorted(graph.modules):
        spec = graph.find_modules_directly_imported_by(importer)
        for imported in sorted(spec):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                if "import" not in detail["line_contents"]:
                    continue
                path = _module_file(root, importer)
                stmt = _statement_at(path, detail["line_number"])
                if isinstance(stmt, ast.ImportFrom):
                    for alias in stmt.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            found.append(f"{path.relative_to(root)}:{detail['line_number']}: {imported}.{alias.name}")
    return sorted(set(found))


def _module_file(root: Path, module: str) -> Path:
    base = root.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def test_no_module_imports_private_names() -> None:
    assert private_name_imports() == []


def test_private_name_check_finds_a_lazy_import(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("*.onnx", "*.npz", "__pycache__"))
    with open(tmp_path / "harness/run/driver.py", "a") as f:
        f.write("\n\ndef _probe() -> None:\n    from harness.run.evaluation import (\n"
                "        HostEvaluator,\n        _WORK,\n    )\n")
    code = ("import sys; from pathlib import Path; from tests.test_architecture import private_name_imports; "
            "print('\\n'.join(private_name_imports(Path(sys.argv[1]))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["harness/run/driver.py:" + str(_line_of(tmp_path / "harness/run/driver.py")) + ":",
                                  "harness.run.evaluation._WORK"]


def _line_of(path: Path) -> int:
    return [i for i, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip() == "from harness.run.evaluation import ("][-1]
