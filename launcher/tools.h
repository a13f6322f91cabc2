/* tools.c: python-mpi's helper modes, each a main of its own (argv after
 * the mode's option); none but --pmb-info starts MPI */
#ifndef PMB_TOOLS_H
#define PMB_TOOLS_H

int pmb_info_main(void);
int pmb_unpack_main(int argc, char **argv);
int pmb_manifest_main(int argc, char **argv);
int pmb_exec_check_main(int argc, char **argv);
int pmb_cleanup_tree_main(int argc, char **argv);
int pmb_sha256_main(int argc, char **argv);

#endif
