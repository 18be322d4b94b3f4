// Whole-file reading, path joining, directory creation and file copying.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/safetensors.h"
#include "util/error.h"
#include "util/fileio.h"

int halo_read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return halo_fail("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) { cap *= 2; buf = xrealloc(buf, cap); }
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); return halo_fail("%s: read error", path); }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return HALO_OK;
}

bool halo_file_exists(const char *path) { return access(path, F_OK) == 0; }

char *halo_path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int halo_mkdirs(const char *dir) {
    if (!*dir) return halo_fail("the directory name is empty");   // (the loop below starts at p + 1)
    char *p = xstrdup(dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) { int r = halo_fail("%s: cannot create directory: %s", p, strerror(errno)); free(p); return r; }
        *s = '/';
    }
    int rc = HALO_OK;
    if (mkdir(p, 0755) != 0 && errno != EEXIST) rc = halo_fail("%s: cannot create directory: %s", p, strerror(errno));
    free(p);
    return rc;
}

int halo_writable_dir(const char *dir) {
    if (halo_mkdirs(dir) != HALO_OK) return HALO_ERR;
    char name[64];
    snprintf(name, sizeof name, ".halo_write_probe.%ld", (long)getpid());
    char *p = halo_path_join(dir, name);
    FILE *f = fopen(p, "wb");
    int rc = f ? HALO_OK : halo_fail("%s: cannot write there: %s", dir, strerror(errno));
    if (f) { fclose(f); remove(p); }
    free(p);
    return rc;
}

int halo_copy_file(const char *src, const char *dst) {
    char *buf;
    size_t n;
    if (halo_read_file(src, &buf, &n) != HALO_OK) return HALO_ERR;
    const void *parts[1] = {buf};
    int rc = halo_write_file_atomic(dst, parts, &n, 1);
    free(buf);
    return rc;
}
