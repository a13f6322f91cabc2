/* start.c: run the staged interpreter (embed: in this process; exec) */
#ifndef PMB_START_H
#define PMB_START_H
#include "pmb.h"

int pmb_start_embed(const char *tree, const pmb_manifest *interp, int argc, char **argv)
    __attribute__((noreturn));
int pmb_start_exec(const char *tree, const pmb_manifest *interp, int argc, char **argv)
    __attribute__((noreturn));
void pmb_install_exit_handler(const char *tree);
int pmb_exec_supported(char *why, size_t len);
int pmb_exec_supported_by(const char *version, char *why, size_t len);

#endif
