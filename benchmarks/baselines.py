"""The two baselines every benchmark group carries next to the twin.

* ``CFloor``: ``floor.c``, plain C grouping with no Python in the loop,
  compiled here with the compiler (and flags) that built the extension and
  loaded with ctypes: the floor a Python wrapper can approach, not beat.
* ``DictQueue``: what a user writes by hand without iopf, a dict of lists of
  plain tuples with a ``report`` and a ``respond``.
"""
from __future__ import annotations

import ctypes
import os
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

from iopf import FAULT_DTYPE, RESPONSE_DTYPE

_HERE = Path(__file__).parent
_LIB: ctypes.CDLL | None = None


def _build() -> ctypes.CDLL:
    """Compile floor.c into a shared library once per process."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)            # the CC, CFLAGS and LDSHARED of this Python
    # The build directory goes once the library is loaded (where the system
    # lets a loaded library's file go): every process builds its own.
    with tempfile.TemporaryDirectory(prefix="iopf-floor-", ignore_cleanup_errors=True) as tmp:
        out = Path(tmp)
        objs = cc.compile([str(_HERE / "floor.c")], output_dir=str(out), extra_preargs=["-O3"])
        lib = out / ("floor" + (sysconfig.get_config_var("SHLIB_SUFFIX") or ".so"))
        cc.link_shared_object(objs, str(lib))
        dll = ctypes.CDLL(str(lib))
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    dll.floor_new.restype = vp
    dll.floor_new.argtypes = [ctypes.c_int]
    dll.floor_free.argtypes = [vp]
    dll.floor_held.restype = i64
    dll.floor_held.argtypes = [vp]
    dll.floor_run.restype = i64
    dll.floor_run.argtypes = [vp, vp, i64, vp, vp, ctypes.POINTER(i64)]
    return dll


def lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = _build()
    return _LIB


class CFloor:
    """Plain C grouping: ``run(faults)`` groups and answers a FAULT_DTYPE array."""

    def __init__(self, mode: str = "hash") -> None:
        self._lib = lib()
        self._p = self._lib.floor_new(1 if mode == "list" else 0)
        if not self._p:
            raise MemoryError
        self._out = np.empty(0, FAULT_DTYPE)
        self._resp = np.empty(0, RESPONSE_DTYPE)
        self.groups = 0

    def run(self, faults: np.ndarray) -> int:
        """Group faults (buffers reused between calls, as a C program would); groups formed."""
        n = len(faults)
        need = n + self._lib.floor_held(self._p)
        if len(self._out) < need:
            self._out = np.empty(need, FAULT_DTYPE)
        if len(self._resp) < n:
            self._resp = np.empty(n, RESPONSE_DTYPE)
        nout = ctypes.c_int64()
        g = self._lib.floor_run(self._p, faults.ctypes.data, n, self._out.ctypes.data,
                                self._resp.ctypes.data, ctypes.byref(nout))
        if g < 0:
            raise MemoryError
        self.groups += g
        return int(g)

    def __del__(self) -> None:
        if getattr(self, "_p", None):
            self._lib.floor_free(self._p)
            self._p = None


LAST_PAGE = 2


class DictQueue:
    """The hand-written grouping a user would write: tuples in a dict of lists."""

    def __init__(self) -> None:
        self.partials: dict[tuple[int, int, int], list[tuple]] = {}
        self.pending: dict[int, list[tuple]] = {}
        self.responses: list[tuple] = []
        self.cookie = 0

    def report(self, fault: tuple) -> tuple[int, list[tuple]] | None:
        """fault: (time, dev, pasid, grpid, flags, perm, addr, private)."""
        key = (fault[1], fault[2], fault[3])
        if not fault[4] & LAST_PAGE:
            self.partials.setdefault(key, []).append(fault)
            return None
        group = self.partials.pop(key, [])
        group.append(fault)
        self.cookie += 1
        self.pending[self.cookie] = group
        return self.cookie, group

    def report_values(self, dev: int, pasid: int, grpid: int, flags: int, addr: int,
                      perm: int = 1, time: int = 0) -> tuple[int, list[tuple]] | None:
        """The same for a model that holds no tuples: it makes one."""
        return self.report((time, dev, pasid, grpid, flags, perm, addr, (0, 0)))

    def respond(self, cookie: int, code: int) -> bool:
        group = self.pending.pop(cookie, None)
        if group is None:
            return False
        last = group[-1]
        self.responses.append((last[0], last[1], last[2], last[3], code, cookie, len(group)))
        return True

    def report_batch(self, faults: list[tuple]) -> list[tuple[int, list[tuple]]]:
        report = self.report
        return [g for g in map(report, faults) if g is not None]


def floor_available() -> bool:
    """False where no C compiler is found (the floor rows are then skipped)."""
    try:
        lib()
    except Exception:  # noqa: BLE001 - any build failure means no floor here
        return False
    return True


if __name__ == "__main__":  # a quick self-check: python benchmarks/baselines.py
    import sys
    sys.path.insert(0, str(_HERE))
    from workloads import sliding
    t = sliding(100_000, open_groups=512, group_size=4, devices=64)
    f = CFloor()
    print("floor groups", f.run(t), "held", f._lib.floor_held(f._p), os.getpid())
    d = DictQueue()
    print("dict groups", len(d.report_batch(t.tolist())), "held", sum(map(len, d.partials.values())))
