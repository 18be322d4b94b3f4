#include "util/ranges.h"
#include <stdlib.h>

typedef struct { size_t off, len; } span;
static int by_off(const void *a, const void *b) {
    const size_t x = ((const span *)a)->off, y = ((const span *)b)->off;
    return x < y ? -1 : x > y;
}

int ranges_gaps(const size_t *off, const size_t *len, int n, size_t total, unsigned long long *out, size_t *gap_len) {
    span *s = malloc((size_t)(n > 0 ? n : 1) * sizeof *s);
    for (int i = 0; i < n; i++) s[i] = (span){off[i], len[i]};
    qsort(s, (size_t)(n > 0 ? n : 0), sizeof *s, by_off);
    size_t cur = 0, sum = 0;
    int ng = 0;
    for (int i = 0; i <= n && cur < total; i++) {
        if (i < n && !s[i].len) continue;   // covers nothing (and must not split a gap)
        const size_t start = i < n ? (s[i].off < total ? s[i].off : total) : total;
        if (start > cur) {
            out[2 * ng] = cur;
            out[2 * ng + 1] = start - cur;
            sum += start - cur;
            ng++;
        }
        if (i < n && s[i].off + s[i].len > cur) cur = s[i].off + s[i].len;
    }
    free(s);
    if (gap_len) *gap_len = sum;
    return ng;
}
