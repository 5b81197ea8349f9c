"""The package structure: no import cycle inside a package, the import rules between packages, and
configuration that reads without torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lora_train", "sweeps", "tracking", "vggt_common")
# package → top-level names it must never import (anywhere in it, at any depth).
FORBIDDEN = {
    "lora_train": {"ray", "mlflow", "optuna", "tracking", "sweeps"},
    "tracking": {"lora_train", "sweeps", "ray", "optuna", "torch"},
    "vggt_common": {"lora_train", "sweeps", "tracking", "torch", "ray", "mlflow", "optuna"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports (module level or inside functions), as absolute names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for imported in imports_of(path):
            # `from a.b import c` may name module a.b.c or attribute c of a.b: keep the module.
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                edges.add(imported)  # a submodule importing its own package's __init__ is no cycle
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    cycle = find_cycle(import_graph(package))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_import_rules(package):
    offenders = sorted(
        f"{module_name(path)} imports {name}"
        for path in (REPO / package).rglob("*.py")
        for name in imports_of(path)
        if name.split(".")[0] in FORBIDDEN[package]
    )
    assert not offenders, offenders


def test_configs_read_without_torch_or_peft():
    code = (
        "import sys\n"
        "from lora_train.config import LoraSettings, TrainConfig, load_config\n"
        "from lora_train.model.config import VGGTConfig\n"
        "from sweeps.space_file import load_space\n"
        "load_config('strategy_b'); VGGTConfig.tiny(); LoraSettings(strategy='C')\n"
        "load_space('sweeps/strategies.yaml', validate_config=False)\n"
        "heavy = sorted(m for m in ('torch', 'peft', 'ray', 'mlflow') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_a_thread_that_raises_fails_its_test(pytester):
    """The project's pytest settings turn an exception in a test's thread into a failure."""
    import tomllib

    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    pytester.makeini("[pytest]\nfilterwarnings =\n" + "".join(f"    {w}\n" for w in settings["filterwarnings"]))
    pytester.makepyfile(
        "import threading\n"
        "def test_it():\n"
        "    t = threading.Thread(target=lambda: 1 / 0)\n"
        "    t.start(); t.join()\n"
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)
