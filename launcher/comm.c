/* The job's communicators (world, node, leaders) and waiting on MPI.
 *
 * Waiting ranks never spin: they test a request and sleep (a spinning node
 * barrier made staging 10x slower on an oversubscribed node). */
#define _GNU_SOURCE
#include <time.h>

#include "comm.h"

void pmb_comms_init(pmb_comms *c)
{
    MPI_Comm_rank(MPI_COMM_WORLD, &c->world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->world_size);
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &c->node) != MPI_SUCCESS)
        pmb_die("MPI_Comm_split_type failed");
    MPI_Comm_rank(c->node, &c->node_rank);
    MPI_Comm_size(c->node, &c->node_size);
    MPI_Comm_split(MPI_COMM_WORLD, c->node_rank == 0 ? 0 : MPI_UNDEFINED, c->world_rank, &c->leaders);
    int idx = 0, nn = 0;
    if (c->leaders != MPI_COMM_NULL) {
        MPI_Comm_rank(c->leaders, &idx);
        MPI_Comm_size(c->leaders, &nn);
    }
    int pair[2] = {idx, nn};
    MPI_Bcast(pair, 2, MPI_INT, 0, c->node);
    c->node_index = pair[0];
    c->nnodes = pair[1];
}

/* Wait for a request without burning the core: test, then sleep a little
 * longer each time (up to 1 ms). */
void pmb_wait(MPI_Request *req)
{
    long ns = 1000;
    for (;;) {
        int done = 0;
        MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (done)
            return;
        pmb_backoff(&ns, 1000000);
    }
}

void pmb_node_barrier(void)
{
    MPI_Request r;
    MPI_Ibarrier(pmb_c.node, &r);
    pmb_wait(&r);
}
