#define _GNU_SOURCE
#include "csys_shim.h"
#include <fcntl.h>
#include <linux/falloc.h>
#include <malloc.h>
#include <sys/prctl.h>
#include <sys/stat.h>

int custos_set_dumpable(int on) { return prctl(PR_SET_DUMPABLE, on ? 1 : 0, 0, 0, 0); }
int custos_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }

long long custos_file_size(const char *path) {
    struct statx st;
    if (statx(AT_FDCWD, path, AT_STATX_SYNC_AS_STAT, STATX_SIZE, &st) != 0) return -1;
    return (long long)st.stx_size;
}

int custos_malloc_tune(int mmap_threshold, int trim_threshold) {
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 && mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1;
}

int custos_malloc_trim(void) { return malloc_trim(0); }

int custos_punch_hole(int fd, long long offset, long long len) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len);
}
