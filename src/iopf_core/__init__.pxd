from iopf_core.grouper cimport Grouper, HashGrouper, ListGrouper, FaultRec, RespRec
