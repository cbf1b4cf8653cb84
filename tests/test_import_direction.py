"""Imports run one way: pretrain <- transfer <- launcher (tools/ and benchmarks/ on top).

Every import statement of the three packages is read with ast (module level and inside
functions alike: a lazy import is still a dependency), so a wrong-way import fails here before
it can make the packages import each other.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# each package may import only the packages below it in the layering
LAYERS = ("pretrain", "transfer", "launcher")
ON_TOP = ("tools", "benchmarks")


def imported_top_names(tree):
    """The first dotted component of every module an ast tree imports (absolute imports)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def wrong_way_imports(package):
    forbidden = set(LAYERS[LAYERS.index(package) + 1 :]) | set(ON_TOP)
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in imported_top_names(tree):
            if name in forbidden:
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_package_imports_only_lower_layers(package):
    assert wrong_way_imports(package) == []


def test_walker_sees_lazy_and_from_imports(tmp_path):
    # the walker itself must catch both spellings, even inside a function
    source = "def f():\n    from launcher.jobs import x\n    import transfer.convert\n"
    names = [name for name, _ in imported_top_names(ast.parse(source))]
    assert names == ["launcher", "transfer"]
