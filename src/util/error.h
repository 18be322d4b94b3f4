// Error reporting for errors a user can cause: functions return HALO_OK (0) or HALO_ERR (-1) and leave a message
// (naming the file, line, key or tensor) retrievable with halo_error(). Internal invariants use assert().
#ifndef HALO_ERROR_H
#define HALO_ERROR_H

#define HALO_OK 0
#define HALO_ERR (-1)

// Sets the thread's last error message (printf-style). Always returns HALO_ERR so callers can `return halo_fail(...)`.
int halo_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Prepends context ("loading model DIR: ") to the current message. Returns HALO_ERR.
int halo_fail_ctx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *halo_error(void);
void halo_clear_error(void);

// Allocation helpers that abort on out-of-memory with a message (host memory exhaustion is not recoverable here).
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

#endif
