"""Stubs of the compiled prq_report scanner (``textscan.pyx``)."""
import numpy as np

def scan_prq(
    block: bytes | bytearray | memoryview,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], bool] | str | None:
    """(columns (9 x n uint64: time, dev, pasid, grpid, flags, perm, addr, seq,
    unit), line index of each record, lines left to the rule, unit names, whether
    the lines are stamped); ``"mixed"`` when bare and stamped lines share the
    block; None when it holds no prq_report line."""
