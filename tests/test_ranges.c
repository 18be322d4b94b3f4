// ranges_gaps (src/util/ranges.c): the uncovered parts of a flat buffer against a per-element mask, for seeded random
// sets of intervals (overlapping, touching, past the end, empty), and the edge cases: no intervals, full cover.
#include <stdint.h>
#include "test.h"
#include "util/ranges.h"

static uint64_t rng = 0x5A17ULL;
static unsigned next(unsigned m) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned)((rng >> 33) % m);
}

// The gaps must be exactly the elements no interval covers, by offset, none touching the next
static int gaps_match(const size_t *off, const size_t *len, int n, size_t total) {
    unsigned char *cov = calloc(total + 1, 1);
    for (int i = 0; i < n; i++)
        for (size_t j = off[i]; j < off[i] + len[i] && j < total; j++) cov[j] = 1;
    unsigned long long out[2 * 65];
    size_t sum = 0, want = 0;
    const int ng = ranges_gaps(off, len, n, total, out, &sum);
    unsigned char *gap = calloc(total + 1, 1);
    int ok = ng >= 0 && ng <= n + 1;
    for (int g = 0; ok && g < ng; g++) {
        ok = out[2 * g + 1] > 0 && out[2 * g] + out[2 * g + 1] <= total &&
             (g == 0 || out[2 * g] > out[2 * g - 2] + out[2 * g - 1]);
        for (size_t j = out[2 * g]; ok && j < out[2 * g] + out[2 * g + 1]; j++) gap[j] = 1;
    }
    for (size_t j = 0; ok && j < total; j++) {
        ok = gap[j] == !cov[j];
        want += !cov[j];
    }
    ok = ok && sum == want;
    free(cov); free(gap);
    return ok;
}

int main(void) {
    size_t off[64], len[64];
    int bad = 0;
    for (int t = 0; t < 500; t++) {
        const size_t total = 1 + next(3000);
        const int n = (int)next(65);
        for (int i = 0; i < n; i++) {
            off[i] = next((unsigned)total + 40);   // some start past the end
            len[i] = next(4) == 0 ? 0 : next(400);
        }
        bad += !gaps_match(off, len, n, total);
    }
    CHECK(bad == 0, "%d of 500 random interval sets gave wrong gaps", bad);
    unsigned long long out[4];
    size_t sum = 1;
    CHECK(ranges_gaps(NULL, NULL, 0, 100, out, &sum) == 1 && out[0] == 0 && out[1] == 100 && sum == 100,
          "no intervals: one gap of the whole buffer");
    const size_t o2[2] = {60, 0}, l2[2] = {40, 60};
    CHECK(ranges_gaps(o2, l2, 2, 100, out, &sum) == 0 && sum == 0, "two intervals covering all: no gap");
    const size_t o3[1] = {10}, l3[1] = {20};
    CHECK(ranges_gaps(o3, l3, 1, 100, out, &sum) == 2 && out[0] == 0 && out[1] == 10 && out[2] == 30 &&
              out[3] == 70 && sum == 80,
          "one interval in the middle: the gaps before and after it");
    TEST_END();
}
