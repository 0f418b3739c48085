"""Write a fake ``triton`` package that mirrors real triton 3.x's import structure.

``broken=True`` reproduces the two failures seen on Ascend hosts: a backend whose driver module
fails to load (discovery raises during ``import triton``), and no active driver
(``_create_driver()`` raises, here triggered at import like builds that query the target then).
``broken=False`` is a healthy install with one active backend.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

BACKENDS_INIT = '''
import importlib.util
import os
from dataclasses import dataclass
from .compiler import BaseBackend
from .driver import DriverBase


def _load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _find_concrete_subclasses(module, base_class):
    found = [obj for obj in module.__dict__.values()
             if isinstance(obj, type) and issubclass(obj, base_class) and obj is not base_class]
    if len(found) != 1:
        raise RuntimeError(f"found {len(found)} subclasses of {base_class} in {module}")
    return found[0]


@dataclass(frozen=True)
class Backend:
    compiler: type = None
    driver: type = None


def _discover_backends():
    backends = dict()
    root = os.path.dirname(__file__)
    for name in os.listdir(root):
        if not os.path.isdir(os.path.join(root, name)) or name.startswith("__"):
            continue
        compiler = _load_module(name, os.path.join(root, name, "compiler.py"))
        driver = _load_module(name, os.path.join(root, name, "driver.py"))
        backends[name] = Backend(_find_concrete_subclasses(compiler, BaseBackend),
                                 _find_concrete_subclasses(driver, DriverBase))
    return backends


backends = _discover_backends()
'''

# Kernels and autotune configs are only declared at import time, never run: any name will do,
# called, decorated with, or used as a type.
ANYTHING_PY = '''
class Anything:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else Anything()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything()


def module_getattr(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return Anything()


import importlib.abc, importlib.machinery, sys, types


class AnySubmodule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on sys.meta_path: any triton.* module not on disk is an empty, permissive module."""

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("triton."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = module_getattr
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


if not any(isinstance(f, AnySubmodule) for f in sys.meta_path):
    sys.meta_path.append(AnySubmodule())
'''

DRIVER_PY = '''
from ..backends import backends


def _create_driver():
    active_drivers = [x.driver for x in backends.values() if x.driver.is_active()]
    if len(active_drivers) != 1:
        raise RuntimeError(f"{len(active_drivers)} active drivers ({active_drivers}). There should only be one.")
    return active_drivers[0]()


class DriverConfig:
    def __init__(self):
        self._default = None
        self._active = None

    @property
    def default(self):
        if self._default is None:
            self._default = _create_driver()
        return self._default

    @property
    def active(self):
        if self._active is None:
            self._active = self.default
        return self._active


driver = DriverConfig()
'''


def backend(active: bool, broken: bool) -> tuple[str, str]:
    compiler = "from triton.backends.compiler import BaseBackend\nclass Compiler(BaseBackend):\n    pass\n"
    driver = (
        ("raise ImportError('libcuda.so.1: cannot open shared object file')\n" if broken else "")
        + "from triton.backends.driver import DriverBase\n"
        + f"class Driver(DriverBase):\n    @classmethod\n    def is_active(cls):\n        return {active}\n"
    )
    return compiler, driver


def make_triton(root: Path, broken: bool) -> Path:
    pkg = root / "triton"
    files = {
        "_anything.py": ANYTHING_PY,
        "__init__.py": (
            "__version__ = \"3.3.0\"\nfrom . import backends, language, runtime\nfrom .runtime.jit import jit\n"
            "from ._anything import module_getattr as __getattr__\n"
            + ("_target = runtime.driver.driver.active\n" if broken else "")
        ),
        # Kernels are only declared at import time, never run: any language name will do.
        "language/__init__.py": "from .._anything import module_getattr as __getattr__\n",
        "runtime/__init__.py": "from . import driver\nfrom .._anything import module_getattr as __getattr__\n",
        # torch's inductor imports triton.compiler.compiler when a triton package is present.
        "compiler/__init__.py": "from . import compiler\nfrom .._anything import module_getattr as __getattr__\n",
        "compiler/compiler.py": "from .._anything import module_getattr as __getattr__\n",
        "runtime/driver.py": DRIVER_PY,
        "runtime/jit.py": (
            "from .._anything import module_getattr as __getattr__\n"
            "def jit(fn=None, **kwargs):\n    return fn if fn is not None else (lambda f: f)\n"
        ),
        "backends/__init__.py": BACKENDS_INIT,
        "backends/compiler.py": (
            "class BaseBackend:\n    pass\nfrom .._anything import module_getattr as __getattr__\n"
        ),
        "backends/driver.py": "class DriverBase:\n    pass\n",
    }
    if broken:
        files["backends/ascend_stub/compiler.py"], files["backends/ascend_stub/driver.py"] = backend(False, False)
        files["backends/nvidia/compiler.py"], files["backends/nvidia/driver.py"] = backend(True, True)
    else:
        files["backends/gpu/compiler.py"], files["backends/gpu/driver.py"] = backend(True, False)
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root
