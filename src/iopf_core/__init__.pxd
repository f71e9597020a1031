from iopf_core.grouper cimport Grouper, HashGrouper, ListGrouper, TreeGrouper, FaultRec, RespRec
