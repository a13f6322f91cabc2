/* config.c: the PYTHON_MPI_* settings (read into pmb_cfg) */
#ifndef PMB_CONFIG_H
#define PMB_CONFIG_H
#include "pmb.h"

void pmb_config_read(pmb_config *cfg);
void pmb_config_threads(pmb_config *cfg);
int pmb_parse_size(const char *s, uint64_t *out);
char *pmb_expand_chroot(const char *pattern, int node_index);

#endif
