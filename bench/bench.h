// Timing helpers shared by the benchmarks: a monotonic clock and the median of repeated measurements.
#ifndef HALO_BENCH_H
#define HALO_BENCH_H
#include <stdlib.h>
#include <time.h>

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static inline int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
// sorts v in place; the upper median for even n, 0 for n = 0
static inline double median(double *v, int n) { qsort(v, (size_t)n, sizeof *v, cmp_d); return n ? v[n / 2] : 0; }
#endif
