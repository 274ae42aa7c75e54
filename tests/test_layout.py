"""The layers (doc/architecture.md): each package imports only the layers below it."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# layer -> the layers it may import (doc/architecture.md's table); models and datasets are the
# repository's top-level folders, imported as adkit.models and adkit.datasets
ALLOWED = {
    "core": set(),
    "evaluate": {"core"},
    "datasets": {"core", "evaluate"},
    "train": {"core"},
    "outputs": {"core", "evaluate"},
    "options": {"core", "evaluate", "outputs"},
    "models": {"core", "evaluate", "train", "options"},
    "deploy": {"core", "evaluate", "outputs", "options"},
    "pipelines": {"core", "evaluate", "datasets", "outputs", "options", "train", "deploy"},
    "commands": {"core", "evaluate", "outputs", "options", "train", "deploy", "pipelines"},
}


def adkit_imports(path):
    """Every adkit module a file imports (top level or inside functions), as dotted names;
    relative imports only inside models/ and datasets/ (between their own modules)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "adkit":
                found += [f"adkit.{alias.name}" for alias in node.names]
            elif node.module.startswith("adkit."):
                found.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            top = os.path.relpath(path, ROOT).split(os.sep)[0]
            assert top in ("models", "datasets"), f"{path}: relative import (adkit uses absolute imports)"
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("adkit.")]
    return found


def layer_files():
    """(layer, file) for every module of every layer."""
    for path in glob.glob(os.path.join(ROOT, "adkit", "*", "**", "*.py"), recursive=True):
        yield os.path.relpath(path, os.path.join(ROOT, "adkit")).split(os.sep)[0], path
    for top in ("models", "datasets"):
        for path in glob.glob(os.path.join(ROOT, top, "**", "*.py"), recursive=True):
            yield top, path


def test_each_layer_imports_only_the_layers_below_it():
    wrong, seen = [], set()
    for layer, path in layer_files():
        seen.add(layer)
        assert layer in ALLOWED, f"{path}: a layer doc/architecture.md does not describe"
        for name in adkit_imports(path):
            target = name.split(".")[1]
            if target in ("__version__", "Predictor", "Prediction"):
                target = "deploy"  # adkit's own __init__ gives these
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{os.path.relpath(path, ROOT)} imports {name}")
    assert seen == set(ALLOWED)
    assert wrong == []


def test_the_rule_catches_an_upward_import(tmp_path):
    module = tmp_path / "models" / "x.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from adkit.deploy.engines import GraphEngine\n")
    assert adkit_imports(str(module)) == ["adkit.deploy.engines"]
    assert "deploy" not in ALLOWED["models"]


def test_every_module_imports():
    """Each module of every layer imports by its installed name (the quick test tier, -m "not
    slow", touches them all at least this far)."""
    import importlib

    for layer, path in layer_files():
        relative = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
        if relative[-1] == "__init__":
            relative = relative[:-1]
        name = ".".join(relative if relative[0] == "adkit" else ["adkit"] + relative)
        assert importlib.import_module(name).__name__ == name
