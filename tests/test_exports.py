"""The public surface: ``anytus.__all__`` is complete and names only what exists."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import TYPE_CHECKING

import pytest

import anytus

if TYPE_CHECKING:
    from types import ModuleType


def _private_modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"anytus.{module_info.name}")
        for module_info in pkgutil.iter_modules(anytus.__path__)
        if module_info.name.startswith("_") and module_info.name != "__main__"
    ]


def _defined_public(module: ModuleType) -> dict[str, object]:
    """The public classes and functions *defined* in *module* (not imported into it)."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    }


def test_all_is_a_tuple_without_duplicates() -> None:
    assert isinstance(anytus.__all__, tuple)
    assert len(set(anytus.__all__)) == len(anytus.__all__)


@pytest.mark.parametrize("name", anytus.__all__)
def test_every_name_in_all_exists(name: str) -> None:
    assert hasattr(anytus, name), name
    assert getattr(anytus, name) is not None


def test_the_store_modules_exist() -> None:
    names = {module.__name__ for module in _private_modules()}
    assert {"anytus._filestore", "anytus._locks", "anytus._streams"} <= names


def test_every_reexported_definition_is_in_all() -> None:
    missing = []
    for module in _private_modules():
        for name, obj in _defined_public(module).items():
            if getattr(anytus, name, None) is obj and name not in anytus.__all__:
                missing.append(f"{module.__name__}.{name}")

    assert missing == []


def test_every_public_name_of_the_package_is_in_all() -> None:
    # anything public that `from anytus import *` would not give is an accident
    extra = [
        name
        for name, obj in vars(anytus).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and name not in anytus.__all__
    ]
    assert extra == []


@pytest.mark.parametrize("module", _private_modules(), ids=lambda module: module.__name__)
def test_private_module_all_is_consistent(module: ModuleType) -> None:
    """A private module's ``__all__`` (when it has one) lists exactly its public definitions."""
    if not hasattr(module, "__all__"):
        pytest.skip(f"{module.__name__} has no __all__")
    declared = set(module.__all__)
    for name in declared:
        assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name}"
    undeclared = set(_defined_public(module)) - declared
    assert undeclared == set(), f"{module.__name__} does not list {sorted(undeclared)}"


def test_every_tus_error_is_exported() -> None:
    from anytus import _exceptions

    for name, obj in _defined_public(_exceptions).items():
        if inspect.isclass(obj) and issubclass(obj, anytus.TusError):
            assert name in anytus.__all__, name
            assert getattr(anytus, name) is obj


def test_store_and_lockers_come_from_the_package() -> None:
    from anytus import FileLocker, FileStore, Locker, MemoryLocker

    assert issubclass(FileLocker, Locker)
    assert issubclass(MemoryLocker, Locker)
    assert (FileStore.__module__, FileStore.__qualname__) == ("anytus._filestore", "FileStore")


def test_asgi_module_exports_the_types_of_tus_app_call() -> None:
    """``anytus.asgi`` exports the types ``TusApp.__call__`` takes, and they resolve at run time
    (frameworks such as Litestar read a handler's annotations)."""
    import typing

    from anytus import asgi

    assert isinstance(asgi.__all__, tuple)
    assert len(set(asgi.__all__)) == len(asgi.__all__)
    for name in asgi.__all__:
        assert getattr(asgi, name, None) is not None, name
    hints = typing.get_type_hints(asgi.TusApp.__call__)
    assert hints == {
        "scope": asgi.Scope,
        "receive": asgi.Receive,
        "send": asgi.Send,
        "return": type(None),
    }
    app: asgi.ASGIApp = asgi.TusApp(anytus.FileStore("unused"))  # mypy checks that it fits
    assert callable(app)


@pytest.mark.parametrize("module_name", ["anytus", "anytus.asgi", "anytus.client"])
def test_public_dataclasses_annotations_resolve(module_name: str) -> None:
    """A public dataclass's annotations resolve at run time: pydantic, FastAPI and Litestar read
    them (``typing.get_type_hints``) when one appears in a model or a handler."""
    import dataclasses
    import typing

    import pydantic  # with fastapi, in the test extra

    module = importlib.import_module(module_name)
    checked = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
            typing.get_type_hints(obj)
            pydantic.TypeAdapter(obj)  # builds its schema from the annotations
            checked.append(name)
    assert checked  # UploadInfo; HookRequest; StoredUpload
