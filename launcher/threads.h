/* threads.c: a pool of threads unpacks one package from a ring of chunks;
 * only the caller's thread calls MPI */
#ifndef PMB_THREADS_H
#define PMB_THREADS_H
#include "pmb.h"

typedef struct pmb_pool pmb_pool;
void pmb_assign_shards(const pmb_manifest *m, int nw, int *owner);
pmb_pool *pmb_pool_new(const char *root, const pmb_manifest *m, const int *owner, int first,
                       int nthreads, const unsigned char *base, uint64_t chunk, int nbuf,
                       int inline_mode);
void pmb_pool_publish(pmb_pool *p, uint64_t n);
uint64_t pmb_pool_done(pmb_pool *p);
void pmb_pool_wait(pmb_pool *p, long ns);
void pmb_pool_check(pmb_pool *p);
void pmb_pool_finish(pmb_pool *p, uint64_t *files, uint64_t *bytes);
int pmb_threads_for(MPI_Comm comm);
int pmb_threads_local(void);

#endif
