/* comm.c: the job's communicators; waiting on MPI without spinning */
#ifndef PMB_COMM_H
#define PMB_COMM_H
#include "pmb.h"

void pmb_comms_init(pmb_comms *c);
void pmb_wait(MPI_Request *req);
void pmb_node_barrier(void);

#endif
