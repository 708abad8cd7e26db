"""The tests' own layout, read with ast (nothing is imported): no module of tests/ or benchmarks/ imports a module
that holds tests, and a file named test_*.py holds tests. What tests share lives in support modules
(wanid_testing.py, tiny_wan.py, comfy_server.py, standin_files.py, lynx_files.py, face_files.py, train_files.py,
workflow_files.py, frontend_browser.py, ...): importing a test module runs its fixtures' and tests' module code
in another module, makes pytest see its fixtures twice, and ties unrelated tests together."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("tests", "benchmarks")  # each is on sys.path when its code runs: modules import one another by name


def holds_tests(tree):
    """Whether a module defines what pytest collects: top-level test* functions or Test* classes."""
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
               or isinstance(node, ast.ClassDef) and node.name.startswith("Test") for node in tree.body)


def imports(tree):
    """(line, top-level module name) of every absolute import, at any depth (imports inside functions too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def problems(sources):
    """sources: {path relative to the repo: source}. Each import of a module that holds tests, as a message."""
    trees = {path: ast.parse(text, filename=path) for path, text in sources.items()}
    # the modules importable by name: the files directly in tests/ and benchmarks/
    by_name = {Path(path).stem: path for path in trees if str(Path(path).parent) in ROOTS}
    found = []
    for path, tree in sorted(trees.items()):
        for line, name in imports(tree):
            target = by_name.get(name)
            if target is not None and target != path and holds_tests(trees[target]):
                found.append(f"{path}:{line} imports {name}, a module with tests: move what it shares into a "
                             "support module (see tests/test_tests_layout.py)")
    return found


def repo_sources():
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8")
            for root in ROOTS for p in sorted((REPO / root).rglob("*.py"))}


def test_no_module_imports_a_module_that_holds_tests():
    assert problems(repo_sources()) == []


def test_the_check_finds_such_imports_at_any_depth():
    planted = {
        "tests/test_a.py": "def test_a():\n    pass\n",
        "tests/a_files.py": "def helper():\n    return 1\n",
        "tests/test_b.py": "from test_a import test_a\nimport a_files\n\ndef test_b():\n    import test_a.sub\n",
        "benchmarks/bench.py": "def main():\n    from test_a import test_a\n",
    }
    assert problems(planted) == [
        "benchmarks/bench.py:2 imports test_a, a module with tests: move what it shares into a support module "
        "(see tests/test_tests_layout.py)",
        "tests/test_b.py:1 imports test_a, a module with tests: move what it shares into a support module "
        "(see tests/test_tests_layout.py)",
        "tests/test_b.py:5 imports test_a, a module with tests: move what it shares into a support module "
        "(see tests/test_tests_layout.py)",
    ]


def test_files_named_like_tests_hold_tests():
    """pytest collects every tests/**/test_*.py: a support module named so would be collected for nothing and
    look like a test module to whoever imports it."""
    empty = [path for path, text in repo_sources().items()
             if path.startswith("tests/") and Path(path).name.startswith("test_") and not holds_tests(ast.parse(text))]
    assert empty == []
