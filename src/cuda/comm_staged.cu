// The host-staged backend of halo_comm (comm_staged.h): device buffers, each collective through a pinned host stage
// and the `local` communicator, chunk by chunk.
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>
#include "cuda/comm_staged.h"
extern "C" {
#include "util/error.h"
}

enum { STAGE_BYTES = 64 << 20 };   // pinned host memory per rank

struct staged_impl {
    halo_comm *local;
    cudaStream_t stream;
    int device;
    int aborted;
    unsigned char *stage;   // [STAGE_BYTES], pinned
};

static staged_impl *impl_of(const halo_comm *c) { return (staged_impl *)c->impl; }

static int cuda_fail(halo_comm *c, const char *what, cudaError_t e) {
    return halo_fail("host-staged %s (rank %d of %d): %s", what, c->rank, c->world, cudaGetErrorString(e));
}

// Before each collective: refuses an aborted communicator, makes the device current and waits for the stream (the
// buffers' producers).
static int ready(halo_comm *c, const char *what) {
    staged_impl *m = impl_of(c);
    if (m->aborted) return halo_fail("host-staged %s (rank %d of %d): the communicator was aborted", what, c->rank, c->world);
    int cur = -1;
    cudaError_t e = cudaGetDevice(&cur);
    if (e == cudaSuccess && cur != m->device) e = cudaSetDevice(m->device);
    if (e == cudaSuccess) e = cudaStreamSynchronize(m->stream);
    return e == cudaSuccess ? HALO_OK : cuda_fail(c, what, e);
}

static int known_type(halo_dtype t) { return t == HALO_F32 || t == HALO_F64 || t == HALO_I64; }

// Copies on the stream, then waits for them.
static cudaError_t copy_sync(staged_impl *m, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, m->stream);
    return e == cudaSuccess ? cudaStreamSynchronize(m->stream) : e;
}

static int staged_allreduce(halo_comm *c, void *buf, size_t n, halo_dtype t, halo_redop op) {
    if (!known_type(t)) return halo_fail("host-staged allreduce (rank %d): unknown dtype %d", c->rank, (int)t);
    if (op != HALO_SUM && op != HALO_MAX)
        return halo_fail("host-staged allreduce (rank %d): unknown op %d", c->rank, (int)op);
    if (ready(c, "allreduce") != HALO_OK) return HALO_ERR;
    staged_impl *m = impl_of(c);
    const size_t es = halo_dtype_size(t);
    const size_t per = STAGE_BYTES / es;
    for (size_t o = 0; o < n; o += per) {
        const size_t k = n - o < per ? n - o : per;
        unsigned char *d = (unsigned char *)buf + o * es;
        cudaError_t e = copy_sync(m, m->stage, d, k * es, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) return cuda_fail(c, "allreduce", e);
        if (m->local->allreduce(m->local, m->stage, k, t, op) != HALO_OK) return HALO_ERR;
        if ((e = copy_sync(m, d, m->stage, k * es, cudaMemcpyHostToDevice)) != cudaSuccess)
            return cuda_fail(c, "allreduce", e);
    }
    return HALO_OK;
}

// recv[n] = sum over ranks of send[rank n ..): chunk [o, o + k) of every rank's piece goes to the stage as world
// pieces of k, `local` reduces them into k more.
static int staged_reduce_scatter(halo_comm *c, const void *send, void *recv, size_t n, halo_dtype t) {
    if (!known_type(t)) return halo_fail("host-staged reduce_scatter (rank %d): unknown dtype %d", c->rank, (int)t);
    if (ready(c, "reduce_scatter") != HALO_OK) return HALO_ERR;
    staged_impl *m = impl_of(c);
    const size_t es = halo_dtype_size(t), W = (size_t)c->world;
    const size_t per = STAGE_BYTES / ((W + 1) * es);
    if (!per) return halo_fail("host-staged reduce_scatter (rank %d): %d ranks do not fit the stage", c->rank, c->world);
    for (size_t o = 0; o < n; o += per) {
        const size_t k = n - o < per ? n - o : per;
        cudaError_t e = cudaSuccess;   // (one copy a rank: a 2D copy's pitch is limited)
        for (size_t r = 0; r < W && e == cudaSuccess; r++)
            e = cudaMemcpyAsync(m->stage + r * k * es, (const unsigned char *)send + (r * n + o) * es, k * es,
                                cudaMemcpyDeviceToHost, m->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(m->stream);
        if (e != cudaSuccess) return cuda_fail(c, "reduce_scatter", e);
        unsigned char *out = m->stage + W * k * es;
        if (m->local->reduce_scatter(m->local, m->stage, out, k, t) != HALO_OK) return HALO_ERR;
        if ((e = copy_sync(m, (unsigned char *)recv + o * es, out, k * es, cudaMemcpyHostToDevice)) != cudaSuccess)
            return cuda_fail(c, "reduce_scatter", e);
    }
    return HALO_OK;
}

// recv[world bytes] = every rank's send[bytes]: chunk [o, o + k) of each rank's piece per round. In place (send ==
// recv + rank bytes) works: a chunk of send is staged before the same bytes are written back.
static int staged_allgather(halo_comm *c, const void *send, void *recv, size_t bytes) {
    if (ready(c, "allgather") != HALO_OK) return HALO_ERR;
    staged_impl *m = impl_of(c);
    const size_t W = (size_t)c->world, per = STAGE_BYTES / (W + 1) / 64 * 64;
    if (!per) return halo_fail("host-staged allgather (rank %d): %d ranks do not fit the stage", c->rank, c->world);
    for (size_t o = 0; o < bytes; o += per) {
        const size_t k = bytes - o < per ? bytes - o : per;
        unsigned char *in = m->stage, *out = m->stage + per;
        cudaError_t e = copy_sync(m, in, (const unsigned char *)send + o, k, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) return cuda_fail(c, "allgather", e);
        if (m->local->allgather(m->local, in, out, k) != HALO_OK) return HALO_ERR;
        for (size_t r = 0; r < W && e == cudaSuccess; r++)
            e = cudaMemcpyAsync((unsigned char *)recv + r * bytes + o, out + r * k, k, cudaMemcpyHostToDevice, m->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(m->stream);
        if (e != cudaSuccess) return cuda_fail(c, "allgather", e);
    }
    return HALO_OK;
}

static int staged_broadcast(halo_comm *c, void *buf, size_t bytes, int root) {
    if (root < 0 || root >= c->world)
        return halo_fail("host-staged broadcast (rank %d of %d): root %d out of range", c->rank, c->world, root);
    if (ready(c, "broadcast") != HALO_OK) return HALO_ERR;
    staged_impl *m = impl_of(c);
    for (size_t o = 0; o < bytes; o += STAGE_BYTES) {
        const size_t k = bytes - o < (size_t)STAGE_BYTES ? bytes - o : (size_t)STAGE_BYTES;
        unsigned char *d = (unsigned char *)buf + o;
        cudaError_t e = c->rank == root ? copy_sync(m, m->stage, d, k, cudaMemcpyDeviceToHost) : cudaSuccess;
        if (e != cudaSuccess) return cuda_fail(c, "broadcast", e);
        if (m->local->broadcast(m->local, m->stage, k, root) != HALO_OK) return HALO_ERR;
        if (c->rank != root && (e = copy_sync(m, d, m->stage, k, cudaMemcpyHostToDevice)) != cudaSuccess)
            return cuda_fail(c, "broadcast", e);
    }
    return HALO_OK;
}

// The stream's work done, then the ranks meet (`local` sees a peer's abort or exit).
static int staged_barrier(halo_comm *c) {
    if (ready(c, "barrier") != HALO_OK) return HALO_ERR;
    return impl_of(c)->local->barrier(impl_of(c)->local);
}

static void staged_abort(halo_comm *c) {
    staged_impl *m = impl_of(c);
    if (m->aborted) return;
    m->aborted = 1;
    halo_comm_abort(m->local);
}

static void staged_set_stream(halo_comm *c, void *stream) { impl_of(c)->stream = (cudaStream_t)stream; }

extern "C" halo_comm *halo_comm_staged_create(halo_comm *local, int device, cudaStream_t stream) {
    unsigned char *stage = NULL;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaHostAlloc((void **)&stage, STAGE_BYTES, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        halo_fail("host-staged communicator (rank %d of %d, device %d): %d MiB of pinned host memory: %s", local->rank,
                  local->world, device, STAGE_BYTES >> 20, cudaGetErrorString(e));
        return NULL;
    }
    staged_impl *m = (staged_impl *)calloc(1, sizeof *m);
    halo_comm *c = (halo_comm *)calloc(1, sizeof *c);
    if (!m || !c) {
        free(m); free(c);
        cudaFreeHost(stage);
        halo_fail("host-staged communicator (rank %d of %d): out of host memory", local->rank, local->world);
        return NULL;
    }
    m->local = local;
    m->stream = stream;
    m->device = device;
    m->stage = stage;
    c->rank = local->rank;
    c->world = local->world;
    c->backend = "host-staged";
    c->allreduce = staged_allreduce;
    c->reduce_scatter = staged_reduce_scatter;
    c->allgather = staged_allgather;
    c->broadcast = staged_broadcast;
    c->barrier = staged_barrier;
    c->abort = staged_abort;
    c->set_stream = staged_set_stream;
    c->destroy = halo_comm_staged_free;
    c->impl = m;
    return c;
}

extern "C" void halo_comm_staged_free(halo_comm *c) {
    if (!c) return;
    staged_impl *m = impl_of(c);
    cudaSetDevice(m->device);
    cudaStreamSynchronize(m->stream);
    cudaFreeHost(m->stage);
    free(m);
    free(c);
}
