"""The type hints (.pyi) name exactly what the modules have, so that they cannot drift from the code."""

import ast
import os

import pytest

import aclshm
import aclshm.acl
from aclshm import _aclshm

PKG = os.path.dirname(aclshm.__file__)


def stub_names(path):
    """Top-level names of a stub, and the public members of its classes."""
    tree = ast.parse(open(os.path.join(PKG, path)).read())
    names, classes = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets)
        if isinstance(node, ast.ClassDef):
            classes[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    return names, classes


def public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


@pytest.mark.parametrize("module, stub", [(aclshm.acl.rt, "acl/rt.pyi"), (aclshm.acl.util, "acl/util.pyi")])
def test_function_stubs_match(module, stub):
    names, _ = stub_names(stub)
    assert public(module) == names - {"Pids", "Prop", "AccessDesc", "Shareable"}


def test_acl_stub_matches():
    names, _ = stub_names("acl/__init__.pyi")
    assert public(aclshm.acl) == names | {"rt", "util"}


def test_native_stub_matches():
    names, classes = stub_names("_aclshm.pyi")
    native = {n for n in dir(_aclshm) if n == "__version__" or not (n.startswith("__") or n.startswith("_acl"))}
    native -= {"_ACL_CONSTANTS"}
    assert native == names - {"Size", "Path", "Blocks", "Tags", "SleepReport"}
    for cls, members in classes.items():
        have = public(getattr(_aclshm, cls))
        declared = {m for m in members if not m.startswith("_")}
        assert have == declared, cls
