// The NCCL backend of halo_comm (src/dist/comm.h), one process per GPU: every buffer passed to its collectives is
// DEVICE memory of the rank's GPU. Collectives are enqueued on the communicator's CUDA stream and return without
// waiting for the GPU (no host synchronization), so a buffer may be read by the host, or reused by other streams,
// only after that stream is synchronized (or an event recorded on it is waited for); barrier is the one call that
// waits, polling the stream until every rank got there (or HALO_NCCL_TIMEOUT_S seconds, default 600, pass).
// Errors: HALO_ERR with a halo_fail message naming the collective, the rank, ncclGetErrorString and
// ncclGetLastError. abort (ncclCommAbort) ends this rank's communicator: its later collectives fail at once; a
// peer's collective that waits for this rank on the GPU is not woken (NCCL does not tell the others), only its
// barrier times out, so the launcher must reap the ranks (halo_comm_run_local's abort of the `local`
// communicator, which halo_comm_nccl_from_local's communicators also call, tells the host side).
// NVLink multicast (NVLS) is turned off unless NCCL_NVLS_ENABLE is set: on shared hosts it can take the GPUs down.
#ifndef HALO_COMM_NCCL_H
#define HALO_COMM_NCCL_H
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "dist/comm.h"

enum { HALO_NCCL_ID_BYTES = 128 };   // sizeof(ncclUniqueId) (NCCL_UNIQUE_ID_BYTES)

// A new NCCL unique id (ncclGetUniqueId) in id[HALO_NCCL_ID_BYTES]: made by one rank, handed to every rank by the
// launcher. HALO_OK or HALO_ERR.
int halo_comm_nccl_unique_id(void *id);

// The communicator of `rank` in a run of `world` ranks sharing unique_id ([HALO_NCCL_ID_BYTES]), on CUDA device
// `device` (made current for the calling thread), enqueueing on `stream` (0: the legacy default stream, which
// orders the collectives with all blocking streams of the device). Collective: every rank calls it. NULL with a
// message on failure.
halo_comm *halo_comm_nccl_create(int rank, int world, const void *unique_id, int device, cudaStream_t stream);
// Destroys the communicator after its pending collectives end (collective unless it was aborted). NULL is a no-op.
void halo_comm_nccl_free(halo_comm *c);
// The stream the collectives enqueue on (halo_comm_set_stream moves them to another stream of the same device).
cudaStream_t halo_comm_nccl_stream(const halo_comm *c);

// Inside fn of halo_comm_run_local (one forked process per GPU): rank 0 makes the unique id, local->broadcast hands
// it to every rank, each rank takes CUDA device local->rank and creates its NCCL communicator (stream 0) in *out.
// Collective over `local`; every rank returns HALO_ERR when any rank failed (too few GPUs, NCCL errors). `local`
// must outlive *out (aborting *out aborts it too); free *out with halo_comm_nccl_free before fn returns. CUDA must
// not have been initialized in the process that forked the ranks (a forked child cannot use its parent's CUDA).
int halo_comm_nccl_from_local(halo_comm *local, halo_comm **out);

#ifdef __cplusplus
}
#endif
#endif
