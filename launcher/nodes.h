/* nodes.c: holds on staged trees, their owners, giving node memory back */
#ifndef PMB_NODES_H
#define PMB_NODES_H
#include "pmb.h"

enum { PMB_TREE_REMOVED, PMB_TREE_HELD, PMB_TREE_UNKNOWN, PMB_TREE_FAILED };
void pmb_job_key(char *out, size_t len);
int pmb_hold_take(const char *tree);
void pmb_hold_release(void);
int pmb_hold_fd(void);
void pmb_tree_record_job(const char *tree);
void pmb_tree_init_jobs(const char *tree);
void pmb_tree_init_layers(const char *tree, const pmb_manifest *ms, int n);
void pmb_remove_superseded(const char *tree, const pmb_manifest *ms, int n);
void pmb_tree_write_base(const char *now, const char *tree);
void pmb_tree_base_file(const char *tree, char *out, size_t len);
int pmb_tree_is_base_of(const char *path, const pmb_manifest *ms, int n);
int pmb_hold_other(const char *tree);
int pmb_tree_remove(const char *tree);
int pmb_tree_remove_damaged(const char *tree);
int pmb_registry_lock(const char *dir);
void pmb_registry_unlock(int fd);
void pmb_reclaim(const char *dir, const char *keep);
void pmb_cleanup_tree(const char *tree);

#endif
