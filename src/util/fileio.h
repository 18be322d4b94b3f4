// Whole-file reading and path helpers.
#ifndef HALO_FILEIO_H
#define HALO_FILEIO_H
#include <stdbool.h>
#include <stddef.h>

// Reads a whole file into a malloc'ed, NUL-terminated buffer; *len (optional) gets the byte count.
int halo_read_file(const char *path, char **out, size_t *len);
bool halo_file_exists(const char *path);
// snprintf-joined "dir/name" into a malloc'ed string.
char *halo_path_join(const char *dir, const char *name);
// mkdir -p; HALO_ERR naming the path on failure.
int halo_mkdirs(const char *dir);
// halo_mkdirs, then a probe file created and removed: fails naming the folder when nothing can be written there.
int halo_writable_dir(const char *dir);
// Copies a file (used to carry tokenizer files into exported model directories).
int halo_copy_file(const char *src, const char *dst);
#endif
