"""totpd/errors.py: every exception the project raises of its own is declared there, under one
base that is never raised itself."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import totpd
from totpd import errors


def _modules():
    for info in pkgutil.walk_packages(totpd.__path__, "totpd."):
        if info.name != "totpd.__main__":
            yield importlib.import_module(info.name)


def test_every_exception_class_in_totpd_is_declared_in_errors_py():
    """Apart from a module's private signal (config's _NestedError, sqlite's _Failed),
    raised and caught inside that module and never seen outside it."""
    elsewhere = [
        f"{module.__name__}.{name}"
        for module in _modules()
        for name, value in vars(module).items()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__
        and module is not errors and not name.startswith("_")
    ]
    assert elsewhere == []


def test_every_exception_in_errors_py_derives_from_the_one_base():
    declared = [value for value in vars(errors).values()
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__]
    assert len(declared) > 10
    assert [cls.__name__ for cls in declared if not issubclass(cls, errors.TotpdError)] == []


def _raised_names(source: str) -> list[str]:
    """The name of each class a `raise` statement in `source` raises by name (`raise X(...)`, `raise errors.X`)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(raised, (ast.Name, ast.Attribute)):
                names.append(raised.id if isinstance(raised, ast.Name) else raised.attr)
    return names


def test_the_base_exception_is_never_raised_itself_only_a_subclass_naming_what_failed():
    package = Path(totpd.__file__).parent
    raising = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
               if "TotpdError" in _raised_names(path.read_text())]
    assert raising == []


def test_the_raise_walk_finds_the_base_raised_by_name_or_through_the_module():
    source = "def f():\n    raise TotpdError('x')\n\ndef g():\n    raise errors.TotpdError\n\ndef h():\n    raise\n"
    assert _raised_names(source) == ["TotpdError", "TotpdError"]
