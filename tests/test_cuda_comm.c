// The GPU communicators on device buffers, one process per rank forked by halo_comm_run_local: the host-staged one
// (src/cuda/comm_staged.cu; 3 ranks, sharing GPUs when there are fewer) always, then NCCL's (src/cuda/comm_nccl.cu,
// made through the `local` communicator by halo_comm_nccl_from_local; one rank per GPU) with 2+ GPUs and NCCL in the
// build. Every rank checks allreduce sum / max of f32, f64 and i64 against a float64 reference over all ranks'
// rank-seeded inputs, reduce_scatter, allgather of int8 codes (also in place, as the sharded master's gather runs),
// broadcast from two roots, sizes past the host stage's 64 MiB (several chunks), a collective on a non-blocking
// stream and the argument errors. Each rank prints "rank R: N checks ok, N failed"; the parent counts a check per
// rank. Skips without CUDA or a usable GPU. The GPUs are counted in a forked child: CUDA must not start in the parent
// before the ranks are forked.
#include "test.h"
#if defined(HALO_CUDA)
#include <float.h>
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "cuda/comm_staged.h"
#include "cuda/cuda_backend.h"
#ifdef HALO_NCCL
#include "cuda/comm_nccl.h"
#endif
#include "util/error.h"

enum { MAX_RANKS = 8, HOST_RANKS = 3 };
static int g_nccl;   // this pass: NCCL's communicator (else the host-staged one)
static int g_ngpu;

// Value i of rank r's input number `salt` (normal(0, 1)), rounded to t's precision (i64: a whole number, ~1e6).
static void rank_values(double *v, size_t n, int r, int salt, halo_dtype t) {
    unsigned long long s = 0x5eedULL + 1000003ULL * (unsigned long long)r + 7919ULL * (unsigned long long)salt;
    for (size_t i = 0; i < n; i++) {
        double x = t_rand_normal(&s);
        v[i] = t == HALO_F32 ? (double)(float)x : t == HALO_I64 ? (double)(int64_t)(x * 1e6) : x;
    }
}
static size_t elem_size(halo_dtype t) { return t == HALO_F32 ? 4 : 8; }
static void to_type(void *dst, const double *v, size_t n, halo_dtype t) {
    for (size_t i = 0; i < n; i++) {
        if (t == HALO_F32) ((float *)dst)[i] = (float)v[i];
        else if (t == HALO_F64) ((double *)dst)[i] = v[i];
        else ((int64_t *)dst)[i] = (int64_t)v[i];
    }
}
static double elem(const void *src, size_t i, halo_dtype t) {
    return t == HALO_F32 ? ((const float *)src)[i] : t == HALO_F64 ? ((const double *)src)[i]
                                                                    : (double)((const int64_t *)src)[i];
}
static const char *type_name(halo_dtype t) { return t == HALO_F32 ? "f32" : t == HALO_F64 ? "f64" : "i64"; }

static void *dev_of(const void *h, size_t bytes) {
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) { fprintf(stderr, "cudaMalloc failed\n"); abort(); }
    if (bytes) cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    cudaDeviceSynchronize();   // a pageable copy may still be in flight, and the collective may use another stream
    return d;
}
// The collectives are asynchronous: barrier (which polls the stream with a timeout) orders the readback after them.
static void *host_of(halo_comm *c, const void *d, size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    CHECK(c->barrier(c) == HALO_OK, "rank %d barrier: %s", c->rank, halo_error());
    if (bytes) cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost);
    return h;
}

// got[i] against ref[i]: exact for max and i64, else within 2 * world roundings of the sum of |terms|.
static void compare(halo_comm *c, const char *what, const void *got, const double *ref, const double *sumabs, size_t n,
                    halo_dtype t, int exact) {
    const double eps = t == HALO_F32 ? FLT_EPSILON : DBL_EPSILON;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        double g = elem(got, i, t), tol = exact || t == HALO_I64 ? 0 : 2.0 * c->world * eps * sumabs[i];
        if (!(fabs(g - ref[i]) <= tol)) { if (!bad) first = i; bad++; }
    }
    CHECK(bad == 0, "rank %d %s: %zu of %zu wrong, first [%zu] = %.17g, want %.17g", c->rank, what, bad, n, first,
          n ? elem(got, first, t) : 0.0, n ? ref[first] : 0.0);
}

static void check_allreduce(halo_comm *c, size_t n, halo_dtype t, halo_redop op, int salt) {
    const size_t es = elem_size(t);
    double *v = malloc(sizeof(double) * (n + 1)), *ref = malloc(sizeof(double) * (n + 1));
    double *sumabs = calloc(n + 1, sizeof(double));
    void *mine = malloc(es * (n + 1));
    for (int r = 0; r < c->world; r++) {
        rank_values(v, n, r, salt, t);
        if (r == c->rank) to_type(mine, v, n, t);
        for (size_t i = 0; i < n; i++) {
            ref[i] = r == 0 ? v[i] : op == HALO_SUM ? ref[i] + v[i] : fmax(ref[i], v[i]);
            sumabs[i] += fabs(v[i]);
        }
    }
    void *d = dev_of(mine, es * n);
    char what[96];
    snprintf(what, sizeof what, "allreduce %s %s n=%zu", op == HALO_SUM ? "sum" : "max", type_name(t), n);
    CHECK(c->allreduce(c, d, n, t, op) == HALO_OK, "rank %d %s: %s", c->rank, what, halo_error());
    void *got = host_of(c, d, es * n);
    compare(c, what, got, ref, sumabs, n, t, op == HALO_MAX);
    cudaFree(d);
    free(v); free(ref); free(sumabs); free(mine); free(got);
}

// recv[n] = sum over ranks of send[rank * n ..), send holding world * n elements on every rank.
static void check_reduce_scatter(halo_comm *c, size_t n, halo_dtype t, int salt) {
    const size_t es = elem_size(t), all = (size_t)c->world * n;
    double *v = malloc(sizeof(double) * (all + 1)), *ref = calloc(n + 1, sizeof(double));
    double *sumabs = calloc(n + 1, sizeof(double));
    void *mine = malloc(es * (all + 1));
    for (int r = 0; r < c->world; r++) {
        rank_values(v, all, r, salt, t);
        if (r == c->rank) to_type(mine, v, all, t);
        for (size_t i = 0; i < n; i++) {
            ref[i] += v[(size_t)c->rank * n + i];
            sumabs[i] += fabs(v[(size_t)c->rank * n + i]);
        }
    }
    void *send = dev_of(mine, es * all), *recv = NULL;
    cudaMalloc(&recv, es * n + 1);
    cudaMemset(recv, 0xff, es * n + 1);   // unwritten elements read as NaN / -1
    cudaDeviceSynchronize();
    char what[96];
    snprintf(what, sizeof what, "reduce_scatter %s n=%zu", type_name(t), n);
    CHECK(c->reduce_scatter(c, send, recv, n, t) == HALO_OK, "rank %d %s: %s", c->rank, what, halo_error());
    void *got = host_of(c, recv, es * n);
    compare(c, what, got, ref, sumabs, n, t, 0);
    cudaFree(send); cudaFree(recv);
    free(v); free(ref); free(sumabs); free(mine); free(got);
}

static int8_t code_of(int r, size_t i) {
    return (int8_t)((unsigned)(r * 37) + (unsigned)(i * 13) + (unsigned)(i >> 8));
}

// in_place: send is the rank's own piece of recv (recv + rank * bytes), as the sharded master's gather passes it.
static void check_allgather(halo_comm *c, size_t bytes, int in_place) {
    int8_t *mine = malloc(bytes + 1);
    for (size_t i = 0; i < bytes; i++) mine[i] = code_of(c->rank, i);
    const size_t all = (size_t)c->world * bytes;
    void *send = in_place ? NULL : dev_of(mine, bytes), *recv = NULL;
    cudaMalloc(&recv, all + 1);
    cudaMemset(recv, 0x5a, all + 1);
    if (in_place) {
        send = (char *)recv + (size_t)c->rank * bytes;
        cudaMemcpy(send, mine, bytes, cudaMemcpyHostToDevice);
    }
    cudaDeviceSynchronize();
    CHECK(c->allgather(c, send, recv, bytes) == HALO_OK, "rank %d allgather %zu: %s", c->rank, bytes, halo_error());
    int8_t *got = host_of(c, recv, all);
    size_t bad = 0;
    for (int r = 0; r < c->world; r++)
        for (size_t i = 0; i < bytes; i++) bad += got[(size_t)r * bytes + i] != code_of(r, i);
    CHECK(bad == 0, "rank %d allgather%s of %zu int8 codes: %zu of %zu bytes wrong", c->rank,
          in_place ? " in place" : "", bytes, bad, all);
    if (!in_place) cudaFree(send);
    cudaFree(recv);
    free(mine); free(got);
}

static void check_broadcast(halo_comm *c, size_t bytes, int root) {
    int8_t *mine = malloc(bytes + 1);
    for (size_t i = 0; i < bytes; i++) mine[i] = code_of(c->rank + 100, i);
    void *d = dev_of(mine, bytes);
    CHECK(c->broadcast(c, d, bytes, root) == HALO_OK, "rank %d broadcast from %d: %s", c->rank, root, halo_error());
    int8_t *got = host_of(c, d, bytes);
    size_t bad = 0;
    for (size_t i = 0; i < bytes; i++) bad += got[i] != code_of(root + 100, i);
    CHECK(bad == 0, "rank %d broadcast of %zu bytes from rank %d: %zu wrong", c->rank, bytes, root, bad);
    cudaFree(d);
    free(mine); free(got);
}

// One all-reduce on a non-blocking stream of the rank's own, then back to stream 0.
static void check_other_stream(halo_comm *c) {
    cudaStream_t s = NULL;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "rank %d cudaStreamCreate", c->rank);
    halo_comm_set_stream(c, s);   // through the communicator's own op (NCCL's or the host-staged one)
    check_allreduce(c, 4099, HALO_F32, HALO_SUM, 9);
    halo_comm_set_stream(c, 0);
    cudaStreamDestroy(s);
}

// Argument errors are refused on the host before NCCL is called (every rank refuses, so none waits).
static void check_errors(halo_comm *c) {
    float *d = NULL;
    cudaMalloc((void **)&d, 64);
    CHECK(c->allreduce(c, d, 4, (halo_dtype)7, HALO_SUM) == HALO_ERR && strstr(halo_error(), "allreduce"),
          "rank %d: allreduce of an unknown dtype not refused (%s)", c->rank, halo_error());
    CHECK(c->broadcast(c, d, 16, c->world) == HALO_ERR && strstr(halo_error(), "broadcast"),
          "rank %d: broadcast from root %d not refused (%s)", c->rank, c->world, halo_error());
    CHECK(c->barrier(c) == HALO_OK, "rank %d barrier after refused calls: %s", c->rank, halo_error());
    cudaFree(d);
}

static int rank_main(halo_comm *local, void *arg) {
    (void)arg;
    alarm(300);   // a rank stuck past this is killed, and the launcher aborts the others
    halo_comm *c = NULL;
#ifdef HALO_NCCL
    if (g_nccl && halo_comm_nccl_from_local(local, &c) != HALO_OK) {
        fprintf(stderr, "rank %d: %s\n", local->rank, halo_error());
        return 1;
    }
#endif
    if (!g_nccl) {
        const int dev = local->rank % g_ngpu;
        if (cuda_select_device(dev) != HALO_OK || !(c = halo_comm_staged_create(local, dev, 0))) {
            fprintf(stderr, "rank %d: %s\n", local->rank, halo_error());
            return 1;
        }
    }
    const char *want = g_nccl ? "nccl" : "host-staged";
    CHECK(c->rank == local->rank && c->world == local->world && strcmp(c->backend, want) == 0 && c->set_stream &&
          c->destroy, "rank %d: communicator says rank %d of %d, backend %s (set_stream, destroy: %d, %d)",
          local->rank, c->rank, c->world, c->backend, c->set_stream != NULL, c->destroy != NULL);
    const size_t sizes[] = {1, 4097, ((size_t)1 << 20) + 3};
    int salt = 0;
    for (int k = 0; k < 3; k++)
        for (int t = HALO_F32; t <= HALO_I64; t++) {
            check_allreduce(c, sizes[k], (halo_dtype)t, HALO_SUM, ++salt);
            check_allreduce(c, sizes[k], (halo_dtype)t, HALO_MAX, ++salt);
        }
    check_reduce_scatter(c, 1, HALO_F32, ++salt);
    check_reduce_scatter(c, 100003, HALO_F32, ++salt);
    check_reduce_scatter(c, 100003, HALO_F64, ++salt);
    check_reduce_scatter(c, 4097, HALO_I64, ++salt);
    check_allgather(c, 1, 0);
    check_allgather(c, 4097, 0);
    check_allgather(c, ((size_t)1 << 20) + 5, 0);
    check_allgather(c, 4097, 1);
    // past the host stage (64 MiB: allreduce in 16 Mi f32 pieces, the others in 64 MiB / (world + 1))
    check_allreduce(c, ((size_t)1 << 24) + 3, HALO_F32, HALO_SUM, ++salt);
    check_reduce_scatter(c, ((size_t)5 << 20) + 1, HALO_F32, ++salt);
    check_allgather(c, ((size_t)24 << 20) + 7, 1);
    check_broadcast(c, 12345, 0);
    check_broadcast(c, 12345, c->world - 1);
    check_other_stream(c);
    check_errors(c);
    halo_comm_destroy(c);
    printf("rank %d: %d checks ok, %d failed\n", local->rank, t_pass, t_fail);
    fflush(stdout);
    return t_fail ? 1 : 0;
}

// One pass over every check with `world` ranks; nccl: NCCL's communicator, else the host-staged one.
static void run_pass(int nccl, int world) {
    g_nccl = nccl;
    printf("%s communicator test: %d ranks on %d GPU(s)%s\n", nccl ? "NCCL" : "host-staged", world,
           world < g_ngpu ? world : g_ngpu, world > g_ngpu ? " (shared)" : "");
    fflush(stdout);
    int status[MAX_RANKS] = {0};
    const double t0 = t_now();
    const int rc = halo_comm_run_local(world, rank_main, NULL, status);
    CHECK(rc == HALO_OK, "halo_comm_run_local: %s", halo_error());
    for (int r = 0; r < world; r++) CHECK(status[r] == 0, "rank %d exited with status %d", r, status[r]);
    printf("%d ranks done in %.1f s\n", world, t_now() - t0);
}
#endif

int main(void) {
#if !defined(HALO_CUDA)
    SKIP("built without CUDA (no nvcc, or SAN=1): GPU communicator tests skipped");
    TEST_END();
#else
    char why[256] = "";
    g_ngpu = cuda_device_count_forked(why, sizeof why);   // CUDA must not start in this process
    if (g_ngpu < 1) {
        SKIP("no usable GPU%s%s: the GPU communicator tests skipped", *why ? ": " : "", why);
        TEST_END();
    }
    setenv("HALO_NCCL_TIMEOUT_S", "120", 0);   // a barrier waiting on a lost peer gives up within the test's time
    run_pass(0, HOST_RANKS);
#ifdef HALO_NCCL
    if (g_ngpu >= 2) run_pass(1, g_ngpu < MAX_RANKS ? g_ngpu : MAX_RANKS);
    else printf("SKIP: NCCL pass: %d usable GPU, it needs 2 or more\n", g_ngpu);
#else
    printf("SKIP: NCCL pass: built without NCCL (no libnccl.so, or NCCL=0)\n");
#endif
    TEST_END();
#endif
}
