"""One source for every numba kernel and its plain-Python twin.

A kernel module decorates its kernels with :func:`kernel_decorator` called on
its own ``globals()``. Imported normally, the kernels are ``numba.njit(cache=True)``
functions; :func:`load_twin` executes the same source a second time as a
separate module in which the decorator is the identity, so the twin of every
kernel (and of every helper it calls) is plain Python. Tests run both copies on
the same inputs and require identical results; benchmarks time both.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any, Callable

TWIN_FLAG = "__plain_python_twin__"


def kernel_decorator(module_globals: dict[str, Any]) -> Callable[[Callable], Callable]:
    """``njit(cache=True)`` in the normal module, the identity in its twin."""
    if module_globals.get(TWIN_FLAG):
        return lambda function: function
    from numba import njit

    return njit(cache=True)


def load_twin(module: ModuleType) -> ModuleType:
    """Return the plain-Python twin of a kernel module (loaded once, then reused)."""
    twin_name = module.__name__ + "__twin"
    if twin_name in sys.modules:
        return sys.modules[twin_name]
    spec = importlib.util.spec_from_file_location(twin_name, module.__file__)
    assert spec is not None and spec.loader is not None
    twin = importlib.util.module_from_spec(spec)
    setattr(twin, TWIN_FLAG, True)
    sys.modules[twin_name] = twin
    spec.loader.exec_module(twin)
    return twin
