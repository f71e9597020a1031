"""Arrow and pandas forms of record arrays (faults, responses, pairs).

Every scalar field becomes a column of its own unsigned type; a ``(2,)``
field such as ``private`` becomes two columns (``private0``,
``private1``). Readable companions are added where the numbers are codes:
``flag_names`` and ``perm_names`` (``"PASID_VALID|LAST_PAGE"``,
``"READ|WRITE"``), ``code_name`` and ``reason_name`` for responses, and
``iommu`` (the unit's name) when metadata and unit names are given; they
are dictionary columns in Arrow and categories in pandas.
"""
from __future__ import annotations

import enum
from typing import Any

import numpy as np

from ..types import Flag, Perm, Reason, Response
from ._common import META_DTYPE, OptionalDependencyError

__all__ = ["to_arrow", "to_pandas"]


def _names(values: np.ndarray, kind: type[enum.Enum]) -> tuple[np.ndarray, list[str]]:
    """Dictionary encoding of ``values`` as names: (indices, names)."""
    uniq, inverse = np.unique(values, return_inverse=True)
    labels = []
    for v in uniq.tolist():
        if issubclass(kind, enum.IntFlag):
            known = [m.name for m in kind if m.value & v and m.name]
            rest = v & ~sum(m.value for m in kind)
            label = "|".join(known + ([hex(rest)] if rest else [])) or "0"
        else:
            try:
                label = kind(v).name
            except ValueError:
                label = str(v)
        labels.append(str(label))
    return inverse.astype(np.int32).reshape(-1), labels


_NAMED = {"flags": ("flag_names", Flag), "perm": ("perm_names", Perm),
          "code": ("code_name", Response), "reason": ("reason_name", Reason)}


def _columns(records: np.ndarray, meta: np.ndarray | None,
             units: list[str] | None) -> list[tuple[str, Any]]:
    """(name, array) for plain columns; (name, (indices, labels)) for named ones."""
    arr = np.asarray(records)
    if arr.dtype.names is None or arr.ndim != 1:
        raise TypeError("expected a 1-D structured array (FAULT_DTYPE, RESPONSE_DTYPE, ...)")
    cols: list[tuple[str, Any]] = []
    for name in arr.dtype.names:
        col = arr[name]
        if col.ndim == 2:
            cols += [(f"{name}{i}", np.ascontiguousarray(col[:, i]))
                     for i in range(col.shape[1])]
        else:
            cols.append((name, np.ascontiguousarray(col)))
    # A response's "code" is only a Response name when it came from the model.
    for name, (label, kind) in _NAMED.items():
        if name in arr.dtype.names and not (name == "code" and "reason" not in arr.dtype.names):
            cols.append((label, _names(arr[name], kind)))
    if meta is not None:
        if meta.dtype != META_DTYPE or len(meta) != len(arr):
            raise ValueError("meta must be a META_DTYPE array as long as the records")
        cols.append(("seq", np.ascontiguousarray(meta["seq"])))
        if units is not None:
            ids = meta["unit"].astype(np.int32)
            if len(ids) and int(ids.max()) >= len(units):
                raise ValueError("meta names a unit beyond units")
            cols.append(("iommu", (ids, list(units))))
        else:
            cols.append(("unit", np.ascontiguousarray(meta["unit"])))
    return cols


def to_arrow(records: np.ndarray, meta: np.ndarray | None = None,
             units: list[str] | None = None) -> Any:
    """A ``pyarrow.Table`` of ``records`` (needs pyarrow).

    >>> import iopf
    >>> t = to_arrow(iopf.trace.synthetic(4, seed=1))
    >>> t.column_names[-4:], t.column("private1").type
    (['private0', 'private1', 'flag_names', 'perm_names'], DataType(uint64))
    """
    try:
        import pyarrow as pa
    except ImportError as e:
        raise OptionalDependencyError('to_arrow needs pyarrow: pip install "iopf[parquet]"') from e
    arrays, names = [], []
    for name, col in _columns(records, meta, units):
        if isinstance(col, tuple):
            idx, labels = col
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()),
                                                         pa.array(labels, pa.string())))
        else:
            arrays.append(pa.array(col))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def to_pandas(records: np.ndarray, meta: np.ndarray | None = None,
              units: list[str] | None = None) -> Any:
    """A ``pandas.DataFrame`` of ``records`` (needs pandas; not pyarrow)."""
    try:
        import pandas as pd
    except ImportError as e:
        raise OptionalDependencyError('to_pandas needs pandas: pip install "iopf[pandas]"') from e
    data = {}
    for name, col in _columns(records, meta, units):
        if isinstance(col, tuple):
            idx, labels = col
            data[name] = pd.Categorical.from_codes(idx, categories=labels)
        else:
            data[name] = col
    return pd.DataFrame(data)
