"""Every module of the repository imports on its own, so no import cycle hides
behind an import order that happens to work, and no import of the
repository's own modules hides inside a function outside tests/ (the way
cycles were hidden before); ``families.load_family`` is the one deliberate
late import.

The modules are found on disk (models/, losses/, data/, training/,
families/, tests/ and the top-level scripts), so the test follows the
layout as it changes. benchmarks/ holds scripts that run when imported and
is left out.
"""
import ast
import glob
import os
import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("models", "losses", "data", "training", "families", "tests")
LATE_IMPORTS_ALLOWED = {("families/__init__.py", "load_family")}


def repo_modules():
    paths = [p for p in glob.glob(os.path.join(ROOT, "*.py"))]
    for pkg in PACKAGES:
        paths += glob.glob(os.path.join(ROOT, pkg, "**", "*.py"), recursive=True)
    names = []
    for p in sorted(paths):
        rel = os.path.relpath(p, ROOT)[:-3].split(os.sep)
        if rel[-1] == "__init__":
            rel = rel[:-1]
        if rel and not any(part.startswith(".") for part in rel):
            names.append(".".join(rel))
    return names


# One fresh interpreter; before each module, every module of the repository
# is dropped from sys.modules, so each import starts from none of them (as in
# a new interpreter) while torch & co. stay loaded (a new process per module
# would spend minutes starting torch).
CHECK = r"""
import importlib, sys, traceback
sys.path.insert(0, {root!r})
import numpy, torch, torch.nn, torch.distributed  # noqa: F401  third-party, kept
ours = {tops!r}
failed = []
for name in {names!r}:
    for m in [m for m in sys.modules if m.split(".")[0] in ours]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\n" + traceback.format_exc(limit=-3))
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = repo_modules()
    assert {"train_stage1", "training.state", "families", "models.text_encoder"} <= set(names)
    tops = sorted({n.split(".")[0] for n in names})
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, "-c", CHECK.format(root=ROOT, tops=tops, names=names)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, "modules that do not import on their own:\n" + \
        res.stdout[-6000:] + res.stderr[-2000:]


def _own_top_levels():
    return {n.split(".")[0] for n in repo_modules()}


def test_no_function_local_import_of_the_repositorys_modules():
    ours = _own_top_levels()
    found = []
    for name in repo_modules():
        if name.split(".")[0] == "tests":
            continue  # a test importing what it tests inside the test is fine
        rel = name.replace(".", os.sep)
        path = os.path.join(ROOT, rel + ".py")
        if not os.path.exists(path):
            path = os.path.join(ROOT, rel, "__init__.py")
        tree = ast.parse(open(path).read(), path)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if (os.path.relpath(path, ROOT), fn.name) in LATE_IMPORTS_ALLOWED:
                continue
            for node in ast.walk(fn):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                for m in mods:
                    if m.split(".")[0] in ours:
                        found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} in "
                                     f"{fn.name}(): import {m}")
    assert not found, "imports of the repository's modules inside functions:\n" + "\n".join(found)
