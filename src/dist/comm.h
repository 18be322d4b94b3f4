// Collectives between the ranks of a training run (one process per rank): the seam between the trainer and the
// transport. Backends: `local` (src/dist/comm_local.c: processes forked on this machine, shared memory; the
// CPU's data parallelism and the tests of everything distributed) and, for many GPUs, NCCL. Buffers are the
// backend's memory (host memory for `local`). Every call is collective: all ranks make it, in the same order, with
// the same sizes. Sums are taken in rank order by `local`, so every rank gets bit-identical results.
// A rank that fails calls halo_comm_abort: every rank's next (or waiting) collective returns HALO_ERR, so no rank
// hangs on a peer that is gone.
#ifndef HALO_COMM_H
#define HALO_COMM_H
#include <stddef.h>
#include <stdint.h>

typedef enum { HALO_F32 = 0, HALO_F64, HALO_I64 } halo_dtype;
typedef enum { HALO_SUM = 0, HALO_MAX } halo_redop;

typedef struct halo_comm halo_comm;
struct halo_comm {
    int rank, world;
    const char *backend;
    // buf[n] = op over ranks of buf[n] (in place)
    int (*allreduce)(halo_comm *c, void *buf, size_t n, halo_dtype t, halo_redop op);
    // recv[n] = sum over ranks of send[rank * n .. rank * n + n) (send holds world * n elements)
    int (*reduce_scatter)(halo_comm *c, const void *send, void *recv, size_t n, halo_dtype t);
    // recv[world * bytes] = every rank's send[bytes], in rank order
    int (*allgather)(halo_comm *c, const void *send, void *recv, size_t bytes);
    int (*broadcast)(halo_comm *c, void *buf, size_t bytes, int root);
    int (*barrier)(halo_comm *c);
    void (*abort)(halo_comm *c);
    // Device backends (NCCL, host-staged; NULL for the host ones): the CUDA stream (a cudaStream_t) their collectives
    // are enqueued on, and the end of a communicator they made (NCCL's is collective: every rank calls it unless the
    // communicator was aborted first).
    void (*set_stream)(halo_comm *c, void *stream);
    void (*destroy)(halo_comm *c);
    void *impl;
};

size_t halo_dtype_size(halo_dtype t);

// A rank's part of n elements cut into `world` equal chunks of ceil(n / world) (the last ones shorter or empty):
// [*lo, *hi). Collectives that need equal pieces work on world * chunk elements (zero padded).
size_t halo_shard_chunk(size_t n, int world);
void halo_shard_range(size_t n, int world, int rank, size_t *lo, size_t *hi);

// Runs fn(comm, arg) in `world` processes forked from this one (ranks 0 .. world-1), each with a `local`
// communicator over shared memory, and waits for them. A rank's status is fn's return (0 = success); a rank that
// returns non-zero, crashes or is killed aborts the others' collectives; once any rank has returned, a collective
// that still waits for it fails (ranks out of step) instead of hanging; a rank still running HALO_RANK_GRACE_S
// seconds (default 60) after that is killed (it is stuck where the abort does not reach). Returns HALO_OK when every rank returned
// 0, else HALO_ERR with a message naming the first failed rank. status (NULL or [world]) gets each rank's exit code
// (128 + signal for a killed rank). Call before this process starts OpenMP threads: a forked child does not
// inherit a usable OpenMP pool (the halo CLI and the tests fork first).
// While the ranks run, SIGINT and SIGTERM sent to this process are passed on to each rank once (the ranks run in a
// process group of their own, so a terminal's Ctrl-C reaches them only that way); halo_comm_local_signal() then
// tells the last such signal (or one a rank reported, halo_comm_local_mark_signal; 0: none) of the latest run.
int halo_comm_run_local(int world, int (*fn)(halo_comm *c, void *arg), void *arg, int *status);
int halo_comm_local_signal(void);
// In a rank: it stopped on signal `sig` (one sent to it alone, not through the launcher), so that
// halo_comm_local_signal() reports it after the run. Nothing for another backend.
void halo_comm_local_mark_signal(halo_comm *c, int sig);
// Whether a rank of c's run has aborted it (1 + that rank; -1: the launcher), 0 when not or c is not a local
// communicator: a wait that the local collectives do not cover (the NCCL barrier's polling) checks it.
int halo_comm_local_aborted(halo_comm *c);

// A communicator of one rank (every collective is the identity): what a single-process run passes.
halo_comm *halo_comm_single(void);

static inline void halo_comm_abort(halo_comm *c) { if (c && c->abort) c->abort(c); }
static inline void halo_comm_set_stream(halo_comm *c, void *stream) { if (c && c->set_stream) c->set_stream(c, stream); }
static inline void halo_comm_destroy(halo_comm *c) { if (c && c->destroy) c->destroy(c); }
#endif
