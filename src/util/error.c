// Thread-local last-error message and checked allocation.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"

static _Thread_local char g_err[2048];

int halo_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return HALO_ERR;
}

int halo_fail_ctx(const char *fmt, ...) {
    char prefix[1024], old[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_err, sizeof old);
    int k = snprintf(g_err, sizeof g_err, "%s", prefix);
    if (k > 0 && (size_t)k < sizeof g_err) snprintf(g_err + k, sizeof g_err - (size_t)k, "%.*s", (int)(sizeof g_err - 1 - (size_t)k), old);
    return HALO_ERR;
}

const char *halo_error(void) { return g_err[0] ? g_err : "unknown error"; }
void halo_clear_error(void) { g_err[0] = 0; }

static void oom(size_t n) {
    fprintf(stderr, "halo: out of host memory allocating %zu bytes\n", n);
    abort();
}
void *xmalloc(size_t n) { void *p = malloc(n ? n : 1); if (!p) oom(n); return p; }
void *xcalloc(size_t n, size_t size) { void *p = calloc(n ? n : 1, size ? size : 1); if (!p) oom(n * size); return p; }
void *xrealloc(void *p, size_t n) { p = realloc(p, n ? n : 1); if (!p) oom(n); return p; }
char *xstrdup(const char *s) { size_t n = strlen(s) + 1; char *p = xmalloc(n); memcpy(p, s, n); return p; }
