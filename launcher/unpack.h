/* unpack.c: every shard one checksummed zstd frame of whole tar members;
 * writes never leave the tree (see the comment at the top of unpack.c) */
#ifndef PMB_UNPACK_H
#define PMB_UNPACK_H
#include "pmb.h"

/* unpacked bytes of every layer going into the tree being written (0:
 * unknown): how much more room a full node needs */
extern uint64_t pmb_tree_need;

/* python-mpi-bcast verify (--pmb-unpack --verify, --check): a failure
 * inside a shard is reported after that shard's SHA-256, in verify's words
 * when the SHA-256 differs */
extern int pmb_unpack_verify;

typedef struct pmb_unpacker pmb_unpacker;
/* a table of names: in check mode the names a tree would hold, without a
 * tree; unpacking, the files and links one layer made, shared by its
 * threads (a name made twice is refused) */
typedef struct pmb_names pmb_names;
pmb_names *pmb_names_new(void);
void pmb_names_free(pmb_names *t);
/* root NULL: check mode, names the tree; else names: this layer's record */
pmb_unpacker *pmb_unpacker_new(const char *root, const pmb_manifest *m, pmb_names *names);
void pmb_unpacker_feed(pmb_unpacker *u, const unsigned char *buf, uint64_t offset, size_t len,
                       const int *owner, int me);
void pmb_unpacker_finish(pmb_unpacker *u, uint64_t *files, uint64_t *bytes);
int pmb_unpacker_shard(const pmb_unpacker *u);
void pmb_split_create(const char *root, const pmb_manifest *m);
void pmb_split_finish(const char *root, const pmb_manifest *m);
void pmb_check_totals(const pmb_manifest *m, uint64_t files, uint64_t bytes);
void pmb_patch_prefixes(const char *root, const char *final_root, const pmb_manifest *m);
void pmb_check_prefixes(const pmb_names *names, const pmb_manifest *m);
void pmb_set_poke(void (*fn)(void));
int pmb_rmtree(const char *path);
void pmb_repatch_prefixes(const char *root, const char *old_root, const char *new_root,
                          const pmb_manifest *m);

#endif
