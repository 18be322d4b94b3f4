// Minimal test harness: CHECK macros count passes and failures; TEST_END prints "N passed, N failed, N skipped"
// and returns the exit status. Shared data is found through HALO_SHARED (default ../shared); tests that need it
// call test_shared() and skip with a reason when it is absent.
#ifndef HALO_TEST_H
#define HALO_TEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int t_pass, t_fail, t_skip;

#define CHECK(cond, ...) do { if (cond) t_pass++; else { t_fail++; \
    fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
// |a-b| <= tol * max(1,|b|)-style checks are written out at the call site; this one is relative to |b|.
#define CHECK_REL(a, b, tol, what) do { double _a = (a), _b = (b); double _e = fabs(_a - _b) / fmax(fabs(_b), 1e-30); \
    CHECK(_e <= (tol) && !isnan(_a), "%s: got %.9g want %.9g (rel err %.3g > %.3g)", what, _a, _b, _e, (double)(tol)); } while (0)
#define SKIP(...) do { t_skip++; printf("SKIP: "); printf(__VA_ARGS__); printf("\n"); } while (0)
#define TEST_END() do { printf("%s: %d passed, %d failed, %d skipped\n", __FILE__, t_pass, t_fail, t_skip); \
    return t_fail ? 1 : 0; } while (0)

// Path of the shared data folder, or NULL (with a printed reason) when absent.
static inline const char *test_shared(void) {
    static char buf[4096];
    const char *s = getenv("HALO_SHARED");
    if (!s || !*s) s = "../shared";
    snprintf(buf, sizeof buf, "%s", s);
    if (access(buf, R_OK) != 0) return NULL;
    return buf;
}
// Joins the shared folder and a relative path into a static buffer (one at a time per call site is enough here).
static inline const char *test_shared_path(const char *rel) {
    static char buf[4][4096];
    static int k;
    const char *s = test_shared();
    if (!s) return NULL;
    k = (k + 1) & 3;
    if (snprintf(buf[k], sizeof buf[k], "%s/%s", s, rel) >= (int)sizeof buf[k]) return NULL;   // path too long
    return buf[k];
}

// Relative L2 error ||a-b|| / ||b|| in double.
static inline double rel_l2_f(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
    return sqrt(num) / (sqrt(den) + 1e-300);
}

// Deterministic pseudo-random numbers for test inputs (splitmix64).
static inline unsigned long long t_rng_next(unsigned long long *s) {
    unsigned long long z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL; z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline double t_rand_uniform(unsigned long long *s) { return (t_rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }
static inline double t_rand_normal(unsigned long long *s) {
    double u1 = t_rand_uniform(s) + 1e-300, u2 = t_rand_uniform(s);
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}
// n floats drawn from normal(0, sd) with the test's generator state s (malloc'ed).
static inline float *t_rand_vec(unsigned long long *s, size_t n, double sd) {
    float *v = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) v[i] = (float)(sd * t_rand_normal(s));
    return v;
}
// Monotonic seconds (for timings printed by tests).
static inline double t_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
#endif
