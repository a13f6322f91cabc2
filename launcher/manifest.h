/* manifest.c: the format's rules (pkgformat.py applies the same) */
#ifndef PMB_MANIFEST_H
#define PMB_MANIFEST_H
#include "pmb.h"

int pmb_manifest_parse(pmb_manifest *m, const char *text, size_t len, char *err, size_t errlen);
char *pmb_manifest_decode(const unsigned char *frame, size_t n, size_t *len, char *err,
                          size_t errlen);
void pmb_manifest_read_file(pmb_manifest *m, const char *dir, const char *file, int *fd_out);
int pmb_find_split(const pmb_manifest *m, const char *path);
const char *pmb_path_problem(const char *path, size_t len);
const char *pmb_link_problem(const char *name, const char *target, size_t len);

#endif
