#ifndef CUSTOS_CSYS_SHIM_H
#define CUSTOS_CSYS_SHIM_H
/* Calls Swift cannot make directly: prctl(2) is variadic; statx(2) is hidden behind
   _GNU_SOURCE in the Glibc module. */
int custos_set_dumpable(int on);
int custos_get_dumpable(void);

/* Size in bytes of the file at `path`, or -1 with errno set. Asks statx(2) for
   STATX_SIZE only: a stat(2) that returns the timestamps marks them "queried", and on
   Linux >= 6.13 (multigrain timestamps) the next write then stamps a new fine-grained
   mtime, which dirties the inode and makes every fdatasync(2) write it too. */
long long custos_file_size(const char *path);

/* glibc malloc tuning for a small resident set (mallopt(3), malloc_trim(3)): blocks of
   `mmap_threshold` bytes or more are mmap'd and returned to the kernel when freed (setting it
   turns off glibc's dynamic threshold, which otherwise keeps freed multi-MiB frame buffers
   in the arenas). Returns 1 when glibc accepted both settings. */
int custos_malloc_tune(int mmap_threshold, int trim_threshold);
/* Returns free memory at the top and inside every arena to the kernel; 1 if any was released. */
int custos_malloc_trim(void);
/* Frees the disk blocks of `len` bytes at `offset` of the open file `fd` without changing its
   size or any other byte's offset (fallocate(2) FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
   hidden behind _GNU_SOURCE). 0, or -1 with errno (EOPNOTSUPP where the file system cannot). */
int custos_punch_hole(int fd, long long offset, long long len);
#endif
