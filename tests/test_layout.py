"""The layers of adkit (doc/architecture.md): each subpackage imports only those below it, and
the flat module names of adkit 0.1 still import as the modules they became."""
import ast
import glob
import importlib
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWED = {  # subpackage -> the subpackages it may import (doc/architecture.md's table)
    "core": set(),
    "evaluate": {"core"},
    "train": {"core"},
    "outputs": {"core", "evaluate"},
    "options": {"core", "evaluate", "outputs"},
    "deploy": {"core", "evaluate", "outputs", "options"},
    "pipelines": {"core", "evaluate", "outputs", "options", "train", "deploy"},
}


def adkit_imports(path):
    """Every adkit module a file imports (top level or inside functions), as dotted names."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "adkit":
                found += [f"adkit.{alias.name}" for alias in node.names]
            elif node.module.startswith("adkit."):
                found.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (adkit uses absolute imports)")
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("adkit.")]
    return found


def test_each_subpackage_imports_only_the_layers_below_it():
    wrong = []
    files = glob.glob(os.path.join(ROOT, "adkit", "*", "**", "*.py"), recursive=True)
    assert len(files) > 30
    for path in files:
        layer = os.path.relpath(path, os.path.join(ROOT, "adkit")).split(os.sep)[0]
        assert layer in ALLOWED, f"{path}: a subpackage doc/architecture.md does not describe"
        for name in adkit_imports(path):
            target = name.split(".")[1]
            if target in ("__version__", "Predictor", "Prediction"):
                target = "deploy"  # adkit's own __init__ gives these
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{os.path.relpath(path, ROOT)} imports {name}")
    assert wrong == []


def test_the_flat_names_of_adkit_0_1_import_as_the_new_modules():
    import adkit

    assert len(adkit.MOVED_MODULES) == 27
    for old, new in adkit.MOVED_MODULES.items():
        assert not os.path.exists(os.path.join(ROOT, "adkit", old)), old  # no new package shadows it
        module = importlib.import_module(f"adkit.{old}")
        assert module is importlib.import_module(f"adkit.{new}"), old
        assert module.__spec__.name == f"adkit.{new}"
    from adkit import Predictor
    from adkit.deploy.predictor import Predictor as same

    assert Predictor is same
