/* stage.c: the packages from rank 0 into a tree on every node */
#ifndef PMB_STAGE_H
#define PMB_STAGE_H
#include "pmb.h"

/* what staging did, for the verbose report (rank 0) */
typedef struct {
    double read, bcast, unpack, total; /* seconds: reading, broadcast, the rest of unpacking, all */
    int staged;       /* every node had the tree already: nothing read or sent */
    int waited;       /* nodes that waited for another job step staging the same tree */
    double wait;      /* the longest of those waits, seconds */
    int first;        /* layers before it were copied from each node's earlier tree */
} pmb_stage_report;

char *pmb_stage(pmb_manifest *ms, int n, int *fds, pmb_stage_report *rep);

#endif
