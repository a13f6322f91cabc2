/* mpilib.c: mpi4py in the staged tree finds the launcher's MPI library */
#ifndef PMB_MPILIB_H
#define PMB_MPILIB_H
#include "pmb.h"

const char *pmb_mpi_family(void);
const char *pmb_mpi_library_path(void);
int pmb_mpi4py_check(const char *tree, const pmb_manifest *ms, int n);
void pmb_mpi4py_prepare(const char *tree, const pmb_manifest *ms, int n);
const char *pmb_mpi4py_plan(const char *lib);
void pmb_mpi_record_write(const char *tree, const pmb_manifest *ms, int n);
void pmb_mpi_record_remove(const char *tree);

#endif
