"""Make a driverless ``triton`` importable (Ascend NPU hosts, CPU containers).

Two failures are fixed, in memory only (no installed file is edited):

1. ``triton.backends`` discovers every backend at import time and a backend whose
   ``compiler.py``/``driver.py`` fails to load (missing ``libcuda.so``, a vendor backend built for
   another version) makes ``import triton`` raise. The patched import loads the module without
   its discovery statement and runs a discovery that skips, and logs, each backend that fails.
2. ``triton.runtime.driver._create_driver()`` raises ``RuntimeError("0 active drivers")`` when no
   GPU driver is active, so anything touching ``triton.runtime.driver.active`` crashes. Patched,
   no active driver means ``None``: there is no driver, which is not an error on such a host.
   More than one active driver is still an error (the choice would be ambiguous).
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

BACKENDS_MODULE = "triton.backends"
DRIVER_MODULE = "triton.runtime.driver"
DISCOVERY_FUNCTION = "_discover_backends"

skipped_backends: dict[str, str] = {}


def _without_discovery_call(source: str, filename: str) -> Any:
    """Compile ``triton/backends/__init__.py`` minus its top-level ``x = _discover_backends()``."""
    tree = ast.parse(source, filename)
    tree.body = [
        node
        for node in tree.body
        if not (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == DISCOVERY_FUNCTION
        )
    ]
    return compile(tree, filename, "exec")


def _discover_backends_skipping_failures(module: ModuleType) -> dict[str, Any]:
    """Triton's own discovery (local backend folders, then entry points), one backend at a time."""
    backends: dict[str, Any] = {}

    def add(name: str, compiler: ModuleType, driver: ModuleType) -> None:
        backends[name] = module.Backend(
            module._find_concrete_subclasses(compiler, module.BaseBackend),
            module._find_concrete_subclasses(driver, module.DriverBase),
        )

    root = os.path.dirname(module.__file__ or "")
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not os.path.isdir(path) or name.startswith("__"):
            continue
        try:
            add(
                name,
                module._load_module(name, os.path.join(path, "compiler.py")),
                module._load_module(name, os.path.join(path, "driver.py")),
            )
        except Exception as exc:  # any failure of a third-party backend means: skip it
            skipped_backends[name] = f"{type(exc).__name__}: {exc}"
    for entry in importlib.metadata.entry_points(group="triton.backends"):
        try:
            add(
                entry.name,
                importlib.import_module(f"{entry.value}.compiler"),
                importlib.import_module(f"{entry.value}.driver"),
            )
        except Exception as exc:
            skipped_backends[entry.name] = f"{type(exc).__name__}: {exc}"
    return backends


def _exec_backends_skipping_failures(original: importlib.machinery.SourceFileLoader, module: ModuleType) -> None:
    filename = original.get_filename(BACKENDS_MODULE)
    source = original.get_source(BACKENDS_MODULE) or ""
    exec(_without_discovery_call(source, filename), module.__dict__)
    module.backends = _discover_backends_skipping_failures(module)


def _exec_driver_tolerating_none(original: importlib.machinery.SourceFileLoader, module: ModuleType) -> None:
    original.exec_module(module)
    _patch_driver_creation(module)


_HOOKS: dict[str, Callable[[importlib.machinery.SourceFileLoader, ModuleType], None]] = {
    BACKENDS_MODULE: _exec_backends_skipping_failures,
    DRIVER_MODULE: _exec_driver_tolerating_none,
}


class _PatchingLoader(importlib.abc.Loader):
    """Runs a triton module through its hook instead of plain execution."""

    def __init__(self, original: importlib.machinery.SourceFileLoader,
                 hook: Callable[[importlib.machinery.SourceFileLoader, ModuleType], None]) -> None:
        self.original, self.hook = original, hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        self.hook(self.original, module)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Serves the triton modules named in ``_HOOKS`` through :class:`_PatchingLoader`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        hook = _HOOKS.get(fullname)
        if hook is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        spec.loader = _PatchingLoader(spec.loader, hook)
        return spec


def _forget_triton() -> None:
    for name in [n for n in sys.modules if n == "triton" or n.startswith("triton.")]:
        del sys.modules[name]


def _patch_driver_creation(driver_module: ModuleType) -> None:
    original = driver_module._create_driver

    def create_driver_or_none() -> Any:
        return original() if _has_active_driver(driver_module) else None

    driver_module._create_driver = create_driver_or_none
    config = getattr(driver_module, "driver", None)
    # DriverConfig caches the default; reset it so the patched factory is used.
    for attr in ("_default", "_active"):
        if config is not None and hasattr(config, attr):
            setattr(config, attr, None)


def _has_active_driver(driver_module: ModuleType) -> bool:
    backends = getattr(driver_module, "backends", {})
    return any(b.driver is not None and b.driver.is_active() for b in backends.values())


def apply() -> list[str]:
    """Import ``triton``, fixing it as needed. Returns the names of the fixes that mattered.

    Call only when ``triton`` is installed. Raises if triton still cannot be imported.
    """
    applied: list[str] = []
    try:
        importlib.import_module("triton")
    except Exception:
        _forget_triton()
        sys.meta_path.insert(0, _PatchingFinder())
        importlib.import_module("triton")
        if skipped_backends:
            applied.append("triton.backends: skip backends that fail to load")
    driver_module = importlib.import_module(DRIVER_MODULE)
    if not _has_active_driver(driver_module):
        if driver_module._create_driver.__name__ != "create_driver_or_none":
            _patch_driver_creation(driver_module)
        applied.append("triton.runtime.driver: no active driver means none, not an exception")
    return applied
