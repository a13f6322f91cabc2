/* mpi4py in the staged tree uses the MPI library this process initialised.
 *
 * mpi4py's extension module (MPI.cpython-*.so from a source build, or the
 * PyPI wheel's MPI.mpich.*.so / MPI.openmpi.*.so, picked by mpi4py's own
 * ABI finder from the MPI symbols already in the process) names its MPI
 * library in DT_NEEDED: the wheel asks for libmpi.so.12 (MPICH ABI) or
 * libmpi.so.40 (Open MPI).  The library the launcher runs may carry another
 * name for the same ABI: Debian's libmpich.so.12, Cray's libmpi_cray.so.12.
 * The dynamic loader then searches for the other name and fails, or worse,
 * finds a second MPI.
 *
 * The loader matches a DT_NEEDED name against the DT_SONAME of every object
 * already loaded before it searches any directory.  So, before Python
 * starts, the launcher loads a code-free alias object (built here, in a
 * memfd) whose SONAME is the name mpi4py asks for and whose only DT_NEEDED
 * is the launcher's MPI library by its loaded path: the extension's
 * dependency resolves to the alias, its MPI symbols to the one library that
 * is already initialised.  No file, symlink or LD_LIBRARY_PATH is involved,
 * and a name that already reaches the loaded library is left alone.
 *
 * A staged mpi4py built for another ABI (an Open MPI build under an MPICH
 * launcher, say) would load a second, foreign MPI into the process: its
 * import fails with one line naming both libraries (pmb_mpi4py_check), and
 * a program that never imports mpi4py.MPI runs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "comm.h"
#include "mpilib.h"

/* The ABI family of the MPI headers the launcher was compiled with (and so
 * of the library it links): "mpich" (MPICH, Cray MPICH, Intel MPI, MVAPICH:
 * the MPICH ABI), "openmpi", or "mpiabi" (the MPI 5 standard ABI). */
const char *pmb_mpi_family(void)
{
#if defined(MPI_ABI_VERSION) && !defined(MPICH_VERSION) && !defined(OPEN_MPI)
    return "mpiabi";
#elif defined(OPEN_MPI)
    return "openmpi";
#elif defined(MPICH_VERSION) || defined(MPICH_NAME) || defined(I_MPI_VERSION) || \
    defined(MVAPICH2_VERSION) || defined(MVAPICH_VERSION)
    return "mpich";
#else
    return "unknown";
#endif
}

/* The file of the loaded MPI library, as the loader knows it. */
const char *pmb_mpi_library_path(void)
{
    Dl_info info;
    if (dladdr((void *)PMPI_Init, &info) && info.dli_fname && strchr(info.dli_fname, '/'))
        return info.dli_fname;
    return NULL;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* The ABI family a library name stands for, from its soname version:
 * libmpi.so.12 / libmpich.so.12 / libmpi_cray.so.12 are the MPICH ABI,
 * libmpi.so.40 (Open MPI 3 to 5) and libmpi.so.20 (Open MPI 2) Open MPI,
 * libmpi_abi.so.* the standard ABI. */
static const char *family_of_name(const char *name)
{
    const char *b = base_name(name);
    if (!strncmp(b, "libmpi_abi.", 11))
        return "mpiabi";
    const char *so = strstr(b, ".so.");
    if (!so)
        return "unknown";
    int major = atoi(so + 4);
    if (major == 12)
        return "mpich";
    if (major == 40 || major == 20)
        return "openmpi";
    return "unknown";
}

/* Is this DT_NEEDED entry the C MPI library (not libmpi_cxx, libmpifort, ...)? */
static int is_mpi_c_library(const char *n)
{
    if (strncmp(n, "libmpi", 6))
        return 0;
    static const char *const not_c[] = {"libmpi_cxx", "libmpi_mpifh", "libmpi_usempi", "libmpi_java",
                                        "libmpichcxx", "libmpichfort", "libmpifort", "libmpicxx"};
    for (size_t i = 0; i < sizeof not_c / sizeof *not_c; i++)
        if (!strncmp(n, not_c[i], strlen(not_c[i])))
            return 0;
    return 1;
}

static int read_at(int fd, void *buf, size_t n, uint64_t off)
{
    return pmb_pread_full(fd, buf, n, off) == n ? 0 : -1;
}

/* The MPI library an ELF file (64-bit) names in DT_NEEDED, into out.
 * Returns 1 if found, 0 if none, -1 if the file cannot be read as ELF. */
static int elf_needed_mpi(const char *path, char *out, size_t outlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = -1;
    Elf64_Ehdr eh;
    Elf64_Phdr *ph = NULL;
    Elf64_Dyn *dyn = NULL;
    if (read_at(fd, &eh, sizeof eh, 0) || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
        eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) ||
        eh.e_phnum == 0 || eh.e_phnum > 256)
        goto done;
    ph = malloc(sizeof *ph * eh.e_phnum);
    if (!ph || read_at(fd, ph, sizeof *ph * eh.e_phnum, eh.e_phoff))
        goto done;
    const Elf64_Phdr *pdyn = NULL;
    for (int i = 0; i < eh.e_phnum; i++)
        if (ph[i].p_type == PT_DYNAMIC)
            pdyn = &ph[i];
    if (!pdyn || pdyn->p_filesz > (1u << 20)) {
        rc = pdyn ? -1 : 0;
        goto done;
    }
    size_t ndyn = pdyn->p_filesz / sizeof(Elf64_Dyn);
    dyn = malloc(pdyn->p_filesz ? pdyn->p_filesz : 1);
    if (!dyn || read_at(fd, dyn, ndyn * sizeof *dyn, pdyn->p_offset))
        goto done;
    uint64_t strtab = 0, strsz = 0;
    for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
        if (dyn[i].d_tag == DT_STRTAB)
            strtab = dyn[i].d_un.d_ptr;
        else if (dyn[i].d_tag == DT_STRSZ)
            strsz = dyn[i].d_un.d_val;
    }
    /* DT_STRTAB is an address: map it to a file offset through PT_LOAD */
    uint64_t stroff = 0;
    int mapped = 0;
    for (int i = 0; i < eh.e_phnum; i++)
        if (ph[i].p_type == PT_LOAD && strtab >= ph[i].p_vaddr &&
            strtab < ph[i].p_vaddr + ph[i].p_filesz) {
            stroff = strtab - ph[i].p_vaddr + ph[i].p_offset;
            mapped = 1;
        }
    if (!mapped || !strsz || strsz > (16u << 20))
        goto done;
    char *str = malloc(strsz + 1);
    if (!str || read_at(fd, str, strsz, stroff)) {
        free(str);
        goto done;
    }
    str[strsz] = 0;
    rc = 0;
    for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++)
        if (dyn[i].d_tag == DT_NEEDED && dyn[i].d_un.d_val < strsz &&
            is_mpi_c_library(str + dyn[i].d_un.d_val)) {
            snprintf(out, outlen, "%s", str + dyn[i].d_un.d_val);
            rc = 1;
            break;
        }
    free(str);
done:
    free(dyn);
    free(ph);
    close(fd);
    return rc;
}

/* A code-free ELF shared object: SONAME `soname`, DT_NEEDED `needed`, one
 * read/write PT_LOAD, no executable mapping.  Machine, class and byte order
 * are copied from `like` (the loaded MPI library's own ELF header). */
static unsigned char *alias_image(const Elf64_Ehdr *like, const char *soname, const char *needed,
                                  size_t *len)
{
    enum { NPH = 3, NDYN = 8 };
    size_t l_so = strlen(soname) + 1, l_ne = strlen(needed) + 1;
    size_t off_ph = sizeof(Elf64_Ehdr);
    size_t off_hash = off_ph + NPH * sizeof(Elf64_Phdr);
    size_t off_sym = off_hash + 4 * sizeof(uint32_t);
    size_t off_str = off_sym + sizeof(Elf64_Sym);
    size_t strsz = 1 + l_so + l_ne;
    size_t off_dyn = (off_str + strsz + 7) & ~(size_t)7;
    size_t total = off_dyn + NDYN * sizeof(Elf64_Dyn);
    unsigned char *img = calloc(1, total);
    if (!img)
        return NULL;

    Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
    memcpy(eh->e_ident, like->e_ident, EI_NIDENT);
    eh->e_type = ET_DYN;
    eh->e_machine = like->e_machine;
    eh->e_version = EV_CURRENT;
    eh->e_flags = like->e_flags;
    eh->e_phoff = off_ph;
    eh->e_ehsize = sizeof(Elf64_Ehdr);
    eh->e_phentsize = sizeof(Elf64_Phdr);
    eh->e_phnum = NPH;

    Elf64_Phdr *ph = (Elf64_Phdr *)(img + off_ph);
    ph[0].p_type = PT_LOAD;
    ph[0].p_flags = PF_R | PF_W; /* the loader relocates .dynamic in place */
    ph[0].p_filesz = ph[0].p_memsz = total;
    ph[0].p_align = 0x10000;
    ph[1].p_type = PT_DYNAMIC;
    ph[1].p_flags = PF_R | PF_W;
    ph[1].p_offset = ph[1].p_vaddr = ph[1].p_paddr = off_dyn;
    ph[1].p_filesz = ph[1].p_memsz = NDYN * sizeof(Elf64_Dyn);
    ph[1].p_align = 8;
    ph[2].p_type = PT_GNU_STACK; /* no executable stack wanted */
    ph[2].p_flags = PF_R | PF_W;
    ph[2].p_align = 16;

    uint32_t *hash = (uint32_t *)(img + off_hash); /* nbucket 1, nchain 1, all 0 */
    hash[0] = 1;
    hash[1] = 1;
    char *str = (char *)(img + off_str);
    memcpy(str + 1, soname, l_so);
    memcpy(str + 1 + l_so, needed, l_ne);

    Elf64_Dyn *d = (Elf64_Dyn *)(img + off_dyn);
    d[0].d_tag = DT_NEEDED;  d[0].d_un.d_val = 1 + l_so;
    d[1].d_tag = DT_SONAME;  d[1].d_un.d_val = 1;
    d[2].d_tag = DT_HASH;    d[2].d_un.d_ptr = off_hash;
    d[3].d_tag = DT_STRTAB;  d[3].d_un.d_ptr = off_str;
    d[4].d_tag = DT_SYMTAB;  d[4].d_un.d_ptr = off_sym;
    d[5].d_tag = DT_STRSZ;   d[5].d_un.d_val = strsz;
    d[6].d_tag = DT_SYMENT;  d[6].d_un.d_val = sizeof(Elf64_Sym);
    d[7].d_tag = DT_NULL;
    *len = total;
    return img;
}

/* Load an alias object: SONAME `name`, resolving to the loaded library at
 * `real` (whose in-memory ELF header is `like`).  0 on success, else -1 with
 * the reason in why.  `scratch` is a node-local directory used only where
 * memfd_create is missing. */
static int load_alias(const char *name, const char *real, const Elf64_Ehdr *like,
                      const char *scratch, char *why, size_t whylen)
{
    size_t len;
    unsigned char *img = alias_image(like, name, real, &len);
    if (!img) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    char path[PATH_MAX];
    int fd = -1, unlink_after = 0;
#ifdef SYS_memfd_create
    fd = (int)syscall(SYS_memfd_create, "python-mpi-libmpi-alias", 1u /* MFD_CLOEXEC */);
    if (fd >= 0)
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
#endif
    if (fd < 0) {
        snprintf(path, sizeof path, "%s/.libmpi-alias.XXXXXX", scratch);
        fd = mkostemp(path, O_CLOEXEC);
        unlink_after = 1;
        if (fd < 0) {
            snprintf(why, whylen, "cannot create %s: %s", path, strerror(errno));
            free(img);
            return -1;
        }
    }
    int bad = pmb_write_all(fd, img, len);
    free(img);
    if (bad) {
        snprintf(why, whylen, "cannot write the alias object: %s", strerror(errno));
        close(fd);
        if (unlink_after)
            unlink(path);
        return -1;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (unlink_after) {
        unlink(path);
        close(fd);
    }
    /* a memfd stays open: its /proc/self/fd name is the alias's file name,
     * and the number must not be reused by another file dlopen might see */
    if (!h) {
        const char *e = dlerror();
        snprintf(why, whylen, "%s", e ? e : "dlopen failed");
        if (!unlink_after)
            close(fd);
        return -1;
    }
    return 0;
}

/* mpi4py's extension modules in a site directory of the staged tree: the
 * one mpi4py will import for this launcher's ABI family, and the MPI
 * library it needs. */
typedef struct {
    char ext[PATH_MAX];     /* the extension module mpi4py will load ("" if none) */
    char needed[256];       /* the MPI library it names ("" if it names none) */
    char variants[128];     /* the wheel's ABI variants, "mpich openmpi" */
    int found;              /* mpi4py/MPI*.so present at all */
} pmb_mpi4py;

static void find_mpi4py(const char *dir, const char *family, pmb_mpi4py *out)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char single[PATH_MAX] = "", mine[PATH_MAX] = "";
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        size_t l = strlen(n);
        if (strncmp(n, "MPI.", 4) || l < 7 || strcmp(n + l - 3, ".so"))
            continue;
        out->found = 1;
        /* MPI.<variant>.cpython-...so (wheel >= 4.1.1) or MPI.cpython-...so */
        const char *v = n + 4, *dot = strchr(v, '.');
        size_t vl = dot ? (size_t)(dot - v) : 0;
        int variant = vl && (!strncmp(v, "mpich.", 6) || !strncmp(v, "openmpi.", 8) ||
                             !strncmp(v, "mpiabi.", 7) || !strncmp(v, "impi.", 5) ||
                             !strncmp(v, "msmpi.", 6));
        if (variant) {
            size_t used = strlen(out->variants);
            snprintf(out->variants + used, sizeof out->variants - used, "%s%.*s", used ? " " : "",
                     (int)vl, v);
            if (strlen(family) == vl && !strncmp(v, family, vl))
                snprintf(mine, sizeof mine, "%s/%s", dir, n);
        } else {
            snprintf(single, sizeof single, "%s/%s", dir, n);
        }
    }
    closedir(d);
    const char *pick = out->variants[0] ? mine : single;
    if (!*pick)
        return;
    snprintf(out->ext, sizeof out->ext, "%s", pick);
    if (elf_needed_mpi(out->ext, out->needed, sizeof out->needed) < 0)
        out->needed[0] = 0;
}

/* The mpi4py of the staged tree (the last layer that has one), for this
 * launcher's ABI family.  Read once per process: the MPI record and embed
 * mode's check both ask about the same tree. */
static void mpi4py_in_tree(const char *tree, const pmb_manifest *ms, int n, pmb_mpi4py *out)
{
    static pmb_mpi4py found;
    static char *found_for;
    if (!found_for || strcmp(found_for, tree)) {
        memset(&found, 0, sizeof found);
        char dir[PATH_MAX];
        for (int i = n - 1; i >= 0 && !found.found; i--) {
            if (!ms[i].site_dir || !*ms[i].site_dir)
                continue;
            snprintf(dir, sizeof dir, "%s/%s/mpi4py", tree, ms[i].site_dir);
            find_mpi4py(dir, pmb_mpi_family(), &found);
        }
        free(found_for);
        found_for = pmb_xstrdup(tree);
    }
    *out = found;
}

/* Why the staged mpi4py cannot use the launcher's MPI library (1, the
 * reason in why), or 0 when it can. */
static int mpi4py_foreign(const pmb_mpi4py *m, const char *real, char *why, size_t len)
{
    const char *family = pmb_mpi_family();
    if (!m->found)
        return 0;
    if (m->variants[0] && !m->ext[0]) {
        snprintf(why, len, "mpi4py in the staged tree has builds for the MPI ABIs '%s' only, but "
                 "the launcher's MPI library %s is of the %s ABI; install mpi4py from source "
                 "against this MPI (MPICC=mpicc pip install --no-binary mpi4py mpi4py) and repack",
                 m->variants, real, family);
        return 1;
    }
    if (!m->needed[0] || !strcmp(m->needed, base_name(real)))
        return 0;
    const char *want = family_of_name(m->needed);
    if (!strcmp(want, "unknown") || !strcmp(family, "unknown"))
        return 0; /* cannot judge: leave the name to the loader */
    if (!strcmp(want, family))
        return 0;
    snprintf(why, len, "mpi4py's %s needs %s (%s ABI), but the launcher runs %s (%s ABI): it "
             "would load a second, incompatible MPI; rebuild mpi4py against this MPI or pack the "
             "PyPI mpi4py wheel", base_name(m->ext), m->needed, want, real, family);
    return 1;
}

/* A staged mpi4py built for another MPI family is refused when the program
 * imports mpi4py.MPI, not before: a program that never imports it (numpy
 * only, say) runs.  The one line goes to the tree's start-up hook
 * (python_mpi_bcast/staged_site.py) in PYTHON_MPI_MPI4PY_REFUSED, which
 * survives exec mode's execv and reaches children through sys.executable;
 * the hook raises ImportError with it.  Returns 1 when mpi4py is refused. */
int pmb_mpi4py_check(const char *tree, const pmb_manifest *ms, int n)
{
    unsetenv("PYTHON_MPI_MPI4PY_REFUSED"); /* never one inherited from another job */
    const char *real = pmb_mpi_library_path();
    if (!real)
        return 0; /* MPI linked statically: nothing can name another copy */
    pmb_mpi4py m;
    mpi4py_in_tree(tree, ms, n, &m);
    char why[1536], line[2048];
    if (!mpi4py_foreign(&m, real, why, sizeof why))
        return 0;
    snprintf(line, sizeof line, "python-mpi: %s (rank %d): %s", pmb_host(), pmb_c.world_rank, why);
    setenv("PYTHON_MPI_MPI4PY_REFUSED", line, 1);
    if (pmb_cfg.verbose && pmb_c.world_rank == 0)
        pmb_log("start: %s; importing mpi4py.MPI will fail", why);
    return 1;
}

void pmb_mpi4py_prepare(const char *tree, const pmb_manifest *ms, int n)
{
    const char *real = pmb_mpi_library_path();
    if (!real)
        return; /* MPI linked statically: nothing can name another copy */
    pmb_mpi4py m;
    mpi4py_in_tree(tree, ms, n, &m);
    char why[1536];
    if (!m.found || !m.needed[0] || !strcmp(m.needed, base_name(real)) ||
        mpi4py_foreign(&m, real, why, sizeof why))
        return; /* nothing to alias, or refused at import (pmb_mpi4py_check) */
    const char *want = family_of_name(m.needed);
    if (!strcmp(want, "unknown") || !strcmp(pmb_mpi_family(), "unknown"))
        return; /* cannot judge: leave the name to the loader */
    /* same ABI, another name: alias the name to the loaded library */
    Dl_info info;
    if (!dladdr((void *)PMPI_Init, &info) || !info.dli_fbase)
        return;
    const Elf64_Ehdr *like = info.dli_fbase;
    if (memcmp(like->e_ident, ELFMAG, SELFMAG) || like->e_ident[EI_CLASS] != ELFCLASS64)
        return;
    char scratch[PATH_MAX];
    snprintf(scratch, sizeof scratch, "%s", tree);
    char *s = strrchr(scratch, '/');
    if (s && s != scratch)
        *s = 0;
    if (load_alias(m.needed, real, like, scratch, why, sizeof why))
        pmb_die("cannot make %s (needed by mpi4py's %s) name the launcher's MPI library %s: %s",
                m.needed, base_name(m.ext), real, why);
    if (pmb_cfg.verbose && pmb_c.world_rank == 0)
        pmb_log("start: mpi4py's %s needs %s: resolved to the loaded %s", base_name(m.ext),
                m.needed, real);
}

/* ---- the record beside the tree: children use the launcher's MPI -------
 * Interpreters started from the staged tree without the launcher (children
 * through sys.executable: MPI.Comm.Spawn, MPIPoolExecutor, subprocess,
 * multiprocessing; the rank itself in exec mode; the second step of a
 * stage-only job) have no MPI library in the process when mpi4py.MPI is
 * imported, so the loader would pick whatever libmpi it finds first.  Every
 * launcher start therefore leaves, beside the tree, the alias object of
 * load_alias as a real file:
 *
 *     <node directory>/.pmb-mpi-<tree name>
 *
 * SONAME the name mpi4py's extension asks for, DT_NEEDED the launcher's MPI
 * library by its loaded path, no code.  The interpreter package's start-up
 * hook (python_mpi_bcast/packing/staged_site.py, imported by a .pth file) loads it
 * with RTLD_GLOBAL just before mpi4py.MPI is imported in a process that has
 * no MPI yet.  The file sits outside the tree (the tree is never written
 * after staging), is replaced atomically only when it changes, and needs no
 * exec permission (it has no executable segment). */

static void record_path(const char *tree, char *out, size_t len)
{
    const char *slash = strrchr(tree, '/');
    if (slash)
        snprintf(out, len, "%.*s/.pmb-mpi-%s", (int)(slash - tree), tree, slash + 1);
    else
        snprintf(out, len, ".pmb-mpi-%s", tree);
}

/* Does the file at path hold exactly these bytes? */
static int same_content(const char *path, const unsigned char *img, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0;
    unsigned char *buf = malloc(len + 1);
    ssize_t r = buf ? read(fd, buf, len + 1) : -1;
    int same = r == (ssize_t)len && !memcmp(buf, img, len);
    free(buf);
    close(fd);
    return same;
}

void pmb_mpi_record_write(const char *tree, const pmb_manifest *ms, int n)
{
    const char *real = pmb_mpi_library_path();
    Dl_info info;
    if (real && pmb_c.node_rank == 0 && dladdr((void *)PMPI_Init, &info) && info.dli_fbase) {
        const Elf64_Ehdr *like = info.dli_fbase;
        if (memcmp(like->e_ident, ELFMAG, SELFMAG) || like->e_ident[EI_CLASS] != ELFCLASS64)
            goto done;
        /* the name mpi4py's extension asks for, else the library's own */
        pmb_mpi4py m;
        mpi4py_in_tree(tree, ms, n, &m);
        const char *name = base_name(real);
        if (m.needed[0] && !strcmp(family_of_name(m.needed), pmb_mpi_family()))
            name = m.needed;
        size_t len;
        unsigned char *img = alias_image(like, name, real, &len);
        if (!img)
            pmb_die("out of memory");
        char path[PATH_MAX], tmp[PATH_MAX + 8];
        record_path(tree, path, sizeof path);
        if (!same_content(path, img, len)) {
            /* a failure leaves the ranks as they are: only children miss it */
            snprintf(tmp, sizeof tmp, "%s.XXXXXX", path);
            int fd = mkostemp(tmp, O_CLOEXEC), err = errno, bad = fd < 0;
            if (!bad) {
                bad = pmb_write_all(fd, img, len) || fchmod(fd, 0400);
                err = errno;
                if (close(fd) && !bad)
                    bad = 1, err = errno;
                if (!bad && rename(tmp, path))
                    bad = 1, err = errno;
                if (bad)
                    unlink(tmp);
            }
            if (bad)
                pmb_log("%s (rank %d): cannot write %s (%s): interpreters started from the "
                        "staged tree without python-mpi may load another MPI library than %s",
                        pmb_host(), pmb_c.world_rank, path, strerror(err), real);
        }
        free(img);
    }
done:
    pmb_node_barrier(); /* every rank's children find it */
}

/* The record of a tree that is being removed. */
void pmb_mpi_record_remove(const char *tree)
{
    char path[PATH_MAX];
    record_path(tree, path, sizeof path);
    unlink(path);
}

/* For `python-mpi-bcast info`: what the PyPI wheel's extension will load. */
const char *pmb_mpi4py_plan(const char *lib)
{
    static char out[PATH_MAX + 256];
    const char *family = pmb_mpi_family();
    const char *want = !strcmp(family, "mpich") ? "libmpi.so.12" :
                       !strcmp(family, "openmpi") ? "libmpi.so.40" : NULL;
    if (!lib)
        snprintf(out, sizeof out, "MPI is linked statically; mpi4py uses it as it finds it");
    else if (!want)
        snprintf(out, sizeof out, "the PyPI wheel has no build for the %s ABI of %s; build mpi4py "
                 "from source against it", family, lib);
    else if (!strcmp(base_name(lib), want))
        snprintf(out, sizeof out, "the PyPI wheel's %s is %s", want, lib);
    else
        snprintf(out, sizeof out, "the launcher points the PyPI wheel's %s at %s (in every "
                 "mode, and in interpreters started from the staged tree)", want, lib);
    return out;
}
