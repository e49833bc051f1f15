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
#endif
