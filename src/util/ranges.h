// Gaps between intervals (the parts of a flat buffer that a set of tensors does not cover): llama_cuda's gradient norm
// reads only the gradients whose squares no product summed.
#ifndef HALO_RANGES_H
#define HALO_RANGES_H
#include <stddef.h>

// The parts of [0, total) that none of the n intervals [off[i], off[i] + len[i]) covers (any order, overlaps
// allowed, parts past total ignored): (offset, length) pairs into out (room for n + 1 pairs), by offset, each gap
// maximal. Returns the number of gaps; their summed length goes to *gap_len (may be NULL).
int ranges_gaps(const size_t *off, const size_t *len, int n, size_t total, unsigned long long *out, size_t *gap_len);

#endif
