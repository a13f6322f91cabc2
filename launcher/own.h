/* own.c: the launcher owns MPI's life; the program sees MPI as under python.
 * Shared by the launcher (embed mode) and exec_shim.c (exec mode). */
#ifndef PMB_OWN_H
#define PMB_OWN_H

/* MPI was initialised (PMPI_Init_thread gave `provided`) by the launcher */
void pmb_own_start(int provided, int rank);
/* at exit: status 0 -> clean_exit() (may be NULL), MPI_Finalize; else MPI_Abort.
 * Install after MPI is initialised (on_exit handlers run last-in first-out:
 * before the MPI library's own exit handlers). */
void pmb_own_exit_policy(void (*clean_exit)(void));

#endif
