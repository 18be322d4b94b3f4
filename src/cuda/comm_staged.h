// The host-staged backend of halo_comm (src/dist/comm.h) for GPUs without NCCL: every buffer passed to its
// collectives is DEVICE memory of the rank's GPU, and each collective runs through host memory: the stream is
// synchronized, the data go to a pinned host stage in chunks, the `local` communicator (the forked ranks' shared
// memory, comm_local.c) runs the collective on them, and the results come back. Slower than NCCL (every byte crosses
// PCIe twice, and nothing overlaps the GPU's work), but it needs no NCCL and works when ranks share a GPU: data
// parallel training runs on any machine with a GPU, and its whole GPU path is testable on one GPU. Sums are taken in
// rank order by `local`, so every rank gets bit-identical results. Every call returns with the results on the device
// and the stream idle (no pending work of the collective). abort aborts `local`. Errors: HALO_ERR with a message naming
// the collective, the rank and the CUDA error.
#ifndef HALO_COMM_STAGED_H
#define HALO_COMM_STAGED_H
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "dist/comm.h"

// The communicator of local->rank on CUDA device `device` (made current), copying on `stream`. `local` must outlive
// it. Not collective. NULL with a message when the pinned stage cannot be allocated.
halo_comm *halo_comm_staged_create(halo_comm *local, int device, cudaStream_t stream);
// Frees the stage (not collective). NULL is a no-op.
void halo_comm_staged_free(halo_comm *c);

#ifdef __cplusplus
}
#endif
#endif
