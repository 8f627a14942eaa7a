"""No file imports a test module (tests/**/test_*.py) or a conftest: shared helpers live in
tests.support. import-linter (.importlinter) checks conftests and tests.support's own imports,
but can't name "every test_* module" (its wildcards replace whole names), so this does, with
`ast` over tests/ and bench/."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            # `from tests.core import test_errors` names the test module as an attribute.
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _is_test_module_or_conftest(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" and (parts[-1] == "conftest" or parts[-1].startswith("test_"))


def test_nothing_imports_a_test_module_or_a_conftest() -> None:
    files = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
    assert len(files) > 50, "the scan found too few files"
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in _imported_modules(path)
        if _is_test_module_or_conftest(module)
    ]
    assert not offenders, "import these from tests.support instead:\n" + "\n".join(offenders)
