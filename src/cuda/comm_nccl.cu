// The NCCL backend of halo_comm (comm_nccl.h): one communicator per process and GPU, device buffers, collectives
// enqueued on the communicator's stream; barrier is the only call that waits on the host.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include "cuda/comm_nccl.h"
extern "C" {
#include "util/error.h"
}

static_assert(sizeof(ncclUniqueId) == HALO_NCCL_ID_BYTES, "HALO_NCCL_ID_BYTES must be sizeof(ncclUniqueId)");

struct nccl_impl {
    ncclComm_t comm;
    cudaStream_t stream;
    int device;
    int aborted;          // ncclCommAbort ran: the NCCL communicator is gone
    float *one;           // device float: the barrier's all-reduce
    halo_comm *local;     // the host communicator that launched the ranks (halo_comm_nccl_from_local), or NULL
};

static nccl_impl *impl_of(const halo_comm *c) { return (nccl_impl *)c->impl; }

static int nccl_error(halo_comm *c, const char *what, ncclResult_t r) {
    const char *last = ncclGetLastError(impl_of(c)->aborted ? NULL : impl_of(c)->comm);
    return halo_fail("NCCL %s (rank %d of %d): %s%s%s", what, c->rank, c->world, ncclGetErrorString(r),
                     last && *last ? ": " : "", last ? last : "");
}

// Before each collective: refuses an aborted communicator or one with an asynchronous error (a peer's failure seen
// by NCCL), and makes the communicator's device current.
static int ready(halo_comm *c, const char *what) {
    nccl_impl *m = impl_of(c);
    if (m->aborted) return halo_fail("NCCL %s (rank %d of %d): the communicator was aborted", what, c->rank, c->world);
    ncclResult_t async = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(m->comm, &async);
    if (r != ncclSuccess) return nccl_error(c, what, r);
    if (async != ncclSuccess && async != ncclInProgress) return nccl_error(c, what, async);
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != m->device) {
        cudaError_t e = cudaSetDevice(m->device);
        if (e != cudaSuccess)
            return halo_fail("NCCL %s (rank %d of %d): cudaSetDevice(%d): %s", what, c->rank, c->world, m->device,
                             cudaGetErrorString(e));
    }
    return HALO_OK;
}

static int to_nccl_type(halo_dtype t, ncclDataType_t *out) {
    switch (t) {
    case HALO_F32: *out = ncclFloat32; return 1;
    case HALO_F64: *out = ncclFloat64; return 1;
    case HALO_I64: *out = ncclInt64; return 1;
    }
    return 0;
}

static int nccl_allreduce(halo_comm *c, void *buf, size_t n, halo_dtype t, halo_redop op) {
    ncclDataType_t dt;
    if (!to_nccl_type(t, &dt)) return halo_fail("NCCL allreduce (rank %d): unknown dtype %d", c->rank, (int)t);
    if (op != HALO_SUM && op != HALO_MAX) return halo_fail("NCCL allreduce (rank %d): unknown op %d", c->rank, (int)op);
    if (ready(c, "allreduce") != HALO_OK) return HALO_ERR;
    if (n == 0) return HALO_OK;   // every rank passes the same n
    nccl_impl *m = impl_of(c);
    ncclResult_t r = ncclAllReduce(buf, buf, n, dt, op == HALO_SUM ? ncclSum : ncclMax, m->comm, m->stream);
    return r == ncclSuccess ? HALO_OK : nccl_error(c, "allreduce", r);
}

static int nccl_reduce_scatter(halo_comm *c, const void *send, void *recv, size_t n, halo_dtype t) {
    ncclDataType_t dt;
    if (!to_nccl_type(t, &dt)) return halo_fail("NCCL reduce_scatter (rank %d): unknown dtype %d", c->rank, (int)t);
    if (ready(c, "reduce_scatter") != HALO_OK) return HALO_ERR;
    if (n == 0) return HALO_OK;
    nccl_impl *m = impl_of(c);
    ncclResult_t r = ncclReduceScatter(send, recv, n, dt, ncclSum, m->comm, m->stream);
    return r == ncclSuccess ? HALO_OK : nccl_error(c, "reduce_scatter", r);
}

static int nccl_allgather(halo_comm *c, const void *send, void *recv, size_t bytes) {
    if (ready(c, "allgather") != HALO_OK) return HALO_ERR;
    if (bytes == 0) return HALO_OK;
    nccl_impl *m = impl_of(c);
    ncclResult_t r = ncclAllGather(send, recv, bytes, ncclUint8, m->comm, m->stream);
    return r == ncclSuccess ? HALO_OK : nccl_error(c, "allgather", r);
}

static int nccl_broadcast(halo_comm *c, void *buf, size_t bytes, int root) {
    if (root < 0 || root >= c->world)
        return halo_fail("NCCL broadcast (rank %d of %d): root %d out of range", c->rank, c->world, root);
    if (ready(c, "broadcast") != HALO_OK) return HALO_ERR;
    if (bytes == 0) return HALO_OK;
    nccl_impl *m = impl_of(c);
    ncclResult_t r = ncclBroadcast(buf, buf, bytes, ncclUint8, root, m->comm, m->stream);
    return r == ncclSuccess ? HALO_OK : nccl_error(c, "broadcast", r);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// A one-float all-reduce, then the host polls the stream (and NCCL's asynchronous error) until it is done or
// HALO_NCCL_TIMEOUT_S (default 600) seconds pass; a timeout aborts the communicator, which ends the waiting kernel.
static int nccl_barrier(halo_comm *c) {
    if (ready(c, "barrier") != HALO_OK) return HALO_ERR;
    nccl_impl *m = impl_of(c);
    ncclResult_t r = ncclAllReduce(m->one, m->one, 1, ncclFloat32, ncclSum, m->comm, m->stream);
    if (r != ncclSuccess) return nccl_error(c, "barrier", r);
    const char *env = getenv("HALO_NCCL_TIMEOUT_S");
    const double limit = env && atof(env) > 0 ? atof(env) : 600.0, t0 = now_s();
    for (;;) {
        cudaError_t e = cudaStreamQuery(m->stream);
        if (e == cudaSuccess) return HALO_OK;
        if (e != cudaErrorNotReady)
            return halo_fail("NCCL barrier (rank %d of %d): the stream failed: %s", c->rank, c->world,
                             cudaGetErrorString(e));
        ncclResult_t async = ncclSuccess;
        ncclCommGetAsyncError(m->comm, &async);
        if (async != ncclSuccess && async != ncclInProgress) {
            int rc = nccl_error(c, "barrier", async);
            c->abort(c);
            return rc;
        }
        if (now_s() - t0 > limit) {
            c->abort(c);
            return halo_fail("NCCL barrier (rank %d of %d): no completion after %.0f s (HALO_NCCL_TIMEOUT_S); "
                             "communicator aborted", c->rank, c->world, limit);
        }
        const int peer = halo_comm_local_aborted(m->local);   // a rank that failed before its part: stop waiting
        if (peer) {
            c->abort(c);
            return halo_fail("NCCL barrier (rank %d of %d): %s aborted the run", c->rank, c->world,
                             peer > 0 ? "another rank" : "the launcher");
        }
        struct timespec nap = {0, 100000};   // 0.1 ms
        nanosleep(&nap, NULL);
    }
}

static void nccl_abort(halo_comm *c) {
    nccl_impl *m = impl_of(c);
    if (m->aborted) return;
    m->aborted = 1;
    // the ranks' own communicator first: ncclCommAbort may wait for the other ranks of the node (NCCL documents it as
    // an intra-node collective), and the flag is what wakes them and starts the launcher's grace period
    if (m->local) halo_comm_abort(m->local);
    ncclCommAbort(m->comm);
}

static void nccl_set_stream(halo_comm *c, void *stream) { impl_of(c)->stream = (cudaStream_t)stream; }

// NVLink multicast off unless the environment asks for it (comm_nccl.h); NCCL reads its settings at its first use.
static void nvls_off_by_default(void) { setenv("NCCL_NVLS_ENABLE", "0", 0); }

extern "C" int halo_comm_nccl_unique_id(void *id) {
    nvls_off_by_default();
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) {
        const char *last = ncclGetLastError(NULL);
        return halo_fail("NCCL ncclGetUniqueId: %s%s%s", ncclGetErrorString(r), last && *last ? ": " : "",
                         last ? last : "");
    }
    memcpy(id, &u, sizeof u);
    return HALO_OK;
}

extern "C" halo_comm *halo_comm_nccl_create(int rank, int world, const void *unique_id, int device,
                                            cudaStream_t stream) {
    if (world < 1 || rank < 0 || rank >= world || !unique_id) {
        halo_fail("NCCL init: rank %d of world %d (or no unique id) is not a valid rank", rank, world);
        return NULL;
    }
    nvls_off_by_default();
    cudaError_t e = cudaSetDevice(device);
    float *one = NULL;
    if (e == cudaSuccess) e = cudaMalloc((void **)&one, sizeof(float));
    if (e == cudaSuccess) e = cudaMemset(one, 0, sizeof(float));
    if (e != cudaSuccess) {
        halo_fail("NCCL init (rank %d of %d): CUDA device %d: %s", rank, world, device, cudaGetErrorString(e));
        if (one) cudaFree(one);
        return NULL;
    }
    ncclUniqueId id;
    memcpy(&id, unique_id, sizeof id);
    ncclComm_t comm = NULL;
    ncclResult_t r = ncclCommInitRank(&comm, world, id, rank);
    if (r != ncclSuccess) {
        const char *last = ncclGetLastError(NULL);
        halo_fail("NCCL init (rank %d of %d, device %d): %s%s%s", rank, world, device, ncclGetErrorString(r),
                  last && *last ? ": " : "", last ? last : "");
        cudaFree(one);
        return NULL;
    }
    nccl_impl *m = (nccl_impl *)calloc(1, sizeof *m);
    halo_comm *c = (halo_comm *)calloc(1, sizeof *c);
    if (!m || !c) {
        free(m); free(c);
        ncclCommAbort(comm);
        cudaFree(one);
        halo_fail("NCCL init (rank %d of %d): out of host memory", rank, world);
        return NULL;
    }
    m->comm = comm;
    m->stream = stream;
    m->device = device;
    m->one = one;
    c->rank = rank;
    c->world = world;
    c->backend = "nccl";
    c->allreduce = nccl_allreduce;
    c->reduce_scatter = nccl_reduce_scatter;
    c->allgather = nccl_allgather;
    c->broadcast = nccl_broadcast;
    c->barrier = nccl_barrier;
    c->abort = nccl_abort;
    c->set_stream = nccl_set_stream;
    c->destroy = halo_comm_nccl_free;
    c->impl = m;
    return c;
}

extern "C" void halo_comm_nccl_free(halo_comm *c) {
    if (!c) return;
    nccl_impl *m = impl_of(c);
    cudaSetDevice(m->device);
    if (!m->aborted) {
        // waits for the pending collectives (blocking communicator); destroy only a communicator that finalized
        // cleanly, else abort it (NCCL: ncclCommDestroy after an error may hang)
        ncclResult_t r = ncclCommFinalize(m->comm), async = ncclSuccess;
        if (r == ncclSuccess) ncclCommGetAsyncError(m->comm, &async);
        if (r == ncclSuccess && async == ncclSuccess) ncclCommDestroy(m->comm);
        else {
            fprintf(stderr, "halo: NCCL (rank %d of %d): finalize failed (%s); communicator aborted\n", c->rank,
                    c->world, ncclGetErrorString(r != ncclSuccess ? r : async));
            ncclCommAbort(m->comm);
        }
    }
    cudaFree(m->one);
    free(m);
    free(c);
}

extern "C" cudaStream_t halo_comm_nccl_stream(const halo_comm *c) { return impl_of(c)->stream; }

// Sum over the ranks of `failed` through the host communicator (HALO_ERR when that collective itself fails).
static int any_failed(halo_comm *local, int failed, int64_t *n_failed) {
    *n_failed = failed;
    return local->allreduce(local, n_failed, 1, HALO_I64, HALO_SUM);
}

extern "C" int halo_comm_nccl_from_local(halo_comm *local, halo_comm **out) {
    *out = NULL;
    const int rank = local->rank, world = local->world;
    struct { int32_t ok; unsigned char id[HALO_NCCL_ID_BYTES]; } msg;
    memset(&msg, 0, sizeof msg);
    if (rank == 0) msg.ok = halo_comm_nccl_unique_id(msg.id) == HALO_OK;   // its message stays for rank 0's return
    if (local->broadcast(local, &msg, sizeof msg, 0) != HALO_OK) return HALO_ERR;
    if (!msg.ok)
        return rank == 0 ? HALO_ERR : halo_fail("NCCL init (rank %d): rank 0 could not make the unique id", rank);

    // One GPU per rank: every rank checks its device before any enters ncclCommInitRank (which waits for all).
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e == cudaSuccess && ndev < world) {
        halo_fail("NCCL init (rank %d of %d): one GPU per rank needed, and this process sees %d", rank, world, ndev);
    } else if (e == cudaSuccess && (e = cudaSetDevice(rank)) == cudaSuccess) {
        e = cudaFree(0);   // creates the context now, so a broken device fails here
    }
    int ok = e == cudaSuccess && ndev >= world;
    if (e != cudaSuccess)
        halo_fail("NCCL init (rank %d of %d): CUDA device %d: %s", rank, world, rank, cudaGetErrorString(e));
    int64_t n_failed = 0;
    if (any_failed(local, !ok, &n_failed) != HALO_OK) return HALO_ERR;
    if (n_failed) return ok ? halo_fail("NCCL init (rank %d): %lld rank(s) could not take their GPU", rank,
                                        (long long)n_failed) : HALO_ERR;

    halo_comm *c = halo_comm_nccl_create(rank, world, msg.id, rank, 0);
    if (!c) halo_comm_abort(local);   // peers may wait in ncclCommInitRank: the launcher must end them
    if (any_failed(local, !c, &n_failed) != HALO_OK || n_failed) {
        if (c) {
            c->abort(c);   // no finalize: a peer without a communicator would never join it
            halo_comm_nccl_free(c);
            return halo_fail("NCCL init (rank %d of %d): another rank could not create its communicator", rank, world);
        }
        return HALO_ERR;
    }
    impl_of(c)->local = local;
    *out = c;
    return HALO_OK;
}
