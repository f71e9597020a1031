"""Vectorized parsing of well-formed prq_report lines (numpy over whole blocks)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Parsed:
    faults: np.ndarray        # FAULT_DTYPE records of the lines parsed
    meta: np.ndarray          # META_DTYPE, unit still to be mapped through units
    lines: np.ndarray         # index (in the block) of each record's line
    left: np.ndarray          # candidate lines left to the rule
    units: list[str]          # distinct unit names of this block
    unit_index: np.ndarray    # per record: index into units
    stamped: bool             # the lines carry a timestamp


def parse(block: bytes) -> Parsed | None:
    return None
