"""totpd/errors.py: every exception the project raises of its own is declared there, under one base."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

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
