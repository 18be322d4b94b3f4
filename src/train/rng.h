// Seeded pseudo-random numbers for training (data order, sampling): splitmix64, whose whole state is one u64 so
// that a checkpoint can store it exactly and a resumed run draws the same numbers as an uninterrupted one.
#ifndef HALO_RNG_H
#define HALO_RNG_H
#include <stdint.h>

typedef struct { uint64_t s; } halo_rng;

static inline void halo_rng_seed(halo_rng *r, uint64_t seed) { r->s = seed * 0x2545F4914F6CDD1DULL + 0x632BE59BD9B4E019ULL; }
static inline uint64_t halo_rng_next(halo_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
// Uniform in [0, 1) with 53 random bits.
static inline double halo_rng_uniform(halo_rng *r) { return (double)(halo_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
// Uniform integer in [0, n) (n > 0); the modulo bias is below 2^-40 for the n used here.
static inline uint64_t halo_rng_below(halo_rng *r, uint64_t n) { return halo_rng_next(r) % n; }
#endif
