// The `local` communicator: ranks are processes forked on this machine, exchanging data through one shared
// anonymous mapping made before the fork (a header with a barrier and an abort flag, then one staging slot per
// rank). A collective moves its data through the slots a slot-sized piece at a time: each rank copies its piece in,
// all meet at the barrier, each reads what it needs (reductions in rank order 0, 1, ..., so all ranks compute the
// same bits), all meet again before the slots are reused.
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "dist/comm.h"
#include "util/error.h"

#define SLOT_BYTES ((size_t)1 << 20)

typedef struct {
    atomic_int arrived;      // ranks waiting at the barrier
    atomic_int generation;   // bumped by the last rank to arrive
    atomic_int aborted;      // 0, or 1 + the rank (or -1 for the launcher) that gave up first
    atomic_int departed;     // 0, or 1 + the first rank that returned: no later collective can complete
    atomic_int signalled;    // a signal a rank stopped on (halo_comm_local_mark_signal), 0: none
    int world;
} shm_header;

typedef struct {
    shm_header *h;
    unsigned char *slots;    // world x SLOT_BYTES
} local_impl;

size_t halo_dtype_size(halo_dtype t) { return t == HALO_F32 ? 4 : 8; }

size_t halo_shard_chunk(size_t n, int world) { return world > 0 ? (n + (size_t)world - 1) / (size_t)world : n; }

void halo_shard_range(size_t n, int world, int rank, size_t *lo, size_t *hi) {
    size_t c = halo_shard_chunk(n, world);
    size_t a = (size_t)rank * c;
    *lo = a < n ? a : n;
    *hi = a + c < n ? a + c : n;
}

static local_impl *impl_of(halo_comm *c) { return (local_impl *)c->impl; }
static unsigned char *slot(halo_comm *c, int r) { return impl_of(c)->slots + (size_t)r * SLOT_BYTES; }

static int aborted_error(halo_comm *c, const char *what) {
    int a = atomic_load(&impl_of(c)->h->aborted);
    if (!a && atomic_load(&impl_of(c)->h->departed) > 0)
        return halo_fail("%s on rank %d: rank %d of %d has finished, so the collective cannot complete (the ranks made "
                         "different collectives)", what, c->rank, atomic_load(&impl_of(c)->h->departed) - 1, c->world);
    if (a > 0) return halo_fail("%s on rank %d: rank %d of %d failed, the run stops", what, c->rank, a - 1, c->world);
    return halo_fail("%s on rank %d: the run was stopped (a rank exited early)", what, c->rank);
}

// Sense by generation: the last rank to arrive resets the count and bumps the generation; the others wait for the
// bump, first spinning briefly, then sleeping (ranks may outnumber cores), and give up when the run is aborted or a
// rank has returned (a rank returns only after its last barrier completed, so it will never arrive at this one).
static int local_barrier_named(halo_comm *c, const char *what) {
    shm_header *h = impl_of(c)->h;
    if (atomic_load(&h->aborted) || atomic_load(&h->departed)) return aborted_error(c, what);
    int gen = atomic_load(&h->generation);
    if (atomic_fetch_add(&h->arrived, 1) == c->world - 1) {
        atomic_store(&h->arrived, 0);
        atomic_fetch_add(&h->generation, 1);
    } else {
        for (long spins = 0; atomic_load(&h->generation) == gen; spins++) {
            // a barrier that completed before the abort still counts (its data are whole)
            if ((atomic_load(&h->aborted) || atomic_load(&h->departed)) && atomic_load(&h->generation) == gen)
                return aborted_error(c, what);
            if (spins > 2000) nanosleep(&(struct timespec){0, spins > 20000 ? 200000 : 20000}, NULL);
        }
    }
    return HALO_OK;
}

static int local_barrier(halo_comm *c) { return local_barrier_named(c, "barrier"); }

static void local_abort(halo_comm *c) {
    int expected = 0;
    atomic_compare_exchange_strong(&impl_of(c)->h->aborted, &expected, c->rank + 1);
}

// dst[i] = dst[i] op src[i]
static void reduce_into(void *dst, const void *src, size_t n, halo_dtype t, halo_redop op) {
    if (t == HALO_F32) {
        float *d = dst; const float *s = src;
        if (op == HALO_SUM) for (size_t i = 0; i < n; i++) d[i] += s[i];
        else for (size_t i = 0; i < n; i++) if (s[i] > d[i] || s[i] != s[i]) d[i] = s[i];   // a NaN stays
    } else if (t == HALO_F64) {
        double *d = dst; const double *s = src;
        if (op == HALO_SUM) for (size_t i = 0; i < n; i++) d[i] += s[i];
        else for (size_t i = 0; i < n; i++) if (s[i] > d[i] || s[i] != s[i]) d[i] = s[i];
    } else {
        int64_t *d = dst; const int64_t *s = src;
        if (op == HALO_SUM) for (size_t i = 0; i < n; i++) d[i] = (int64_t)((uint64_t)d[i] + (uint64_t)s[i]);
        else for (size_t i = 0; i < n; i++) d[i] = s[i] > d[i] ? s[i] : d[i];
    }
}

static int local_allreduce(halo_comm *c, void *buf, size_t n, halo_dtype t, halo_redop op) {
    const size_t es = halo_dtype_size(t), per = SLOT_BYTES / es;
    unsigned char *b = buf;
    size_t off = 0;
    do {   // at least one round: every rank meets at the barriers even for 0 elements
        size_t k = n - off < per ? n - off : per;
        memcpy(slot(c, c->rank), b + off * es, k * es);
        if (local_barrier_named(c, "allreduce")) return HALO_ERR;
        memcpy(b + off * es, slot(c, 0), k * es);
        for (int r = 1; r < c->world; r++) reduce_into(b + off * es, slot(c, r), k, t, op);
        if (local_barrier_named(c, "allreduce")) return HALO_ERR;
    } while ((off += per) < n);
    return HALO_OK;
}

static int local_reduce_scatter(halo_comm *c, const void *send, void *recv, size_t n, halo_dtype t) {
    const size_t es = halo_dtype_size(t), per = SLOT_BYTES / es / (size_t)c->world;
    const unsigned char *s = send;
    unsigned char *out = recv;
    size_t off = 0;
    do {
        size_t k = n - off < per ? n - off : per;
        for (int d = 0; d < c->world; d++)   // this rank's piece for every destination d
            memcpy(slot(c, c->rank) + (size_t)d * per * es, s + ((size_t)d * n + off) * es, k * es);
        if (local_barrier_named(c, "reduce-scatter")) return HALO_ERR;
        const size_t mine = (size_t)c->rank * per * es;
        memcpy(out + off * es, slot(c, 0) + mine, k * es);
        for (int r = 1; r < c->world; r++) reduce_into(out + off * es, slot(c, r) + mine, k, t, HALO_SUM);
        if (local_barrier_named(c, "reduce-scatter")) return HALO_ERR;
    } while ((off += per) < n);
    return HALO_OK;
}

static int local_allgather(halo_comm *c, const void *send, void *recv, size_t bytes) {
    const unsigned char *s = send;
    unsigned char *out = recv;
    size_t off = 0;
    do {
        size_t k = bytes - off < SLOT_BYTES ? bytes - off : SLOT_BYTES;
        memcpy(slot(c, c->rank), s + off, k);
        if (local_barrier_named(c, "allgather")) return HALO_ERR;
        for (int r = 0; r < c->world; r++) memcpy(out + (size_t)r * bytes + off, slot(c, r), k);
        if (local_barrier_named(c, "allgather")) return HALO_ERR;
    } while ((off += SLOT_BYTES) < bytes);
    return HALO_OK;
}

static int local_broadcast(halo_comm *c, void *buf, size_t bytes, int root) {
    if (root < 0 || root >= c->world) return halo_fail("broadcast: root %d is not a rank of %d", root, c->world);
    unsigned char *b = buf;
    size_t off = 0;
    do {
        size_t k = bytes - off < SLOT_BYTES ? bytes - off : SLOT_BYTES;
        if (c->rank == root) memcpy(slot(c, 0), b + off, k);
        if (local_barrier_named(c, "broadcast")) return HALO_ERR;
        if (c->rank != root) memcpy(b + off, slot(c, 0), k);
        if (local_barrier_named(c, "broadcast")) return HALO_ERR;
    } while ((off += SLOT_BYTES) < bytes);
    return HALO_OK;
}

// ---- the launcher ----------------------------------------------------------------------------------------------

// While ranks run, SIGINT / SIGTERM to the launcher go to every rank once (the ranks have their own process
// group, so a terminal's Ctrl-C reaches them only this way).
static pid_t *g_rank_pids;
static int g_rank_count;
static volatile sig_atomic_t g_forwarded;
static void forward_signal(int sig) {
    g_forwarded = sig;
    for (int r = 0; r < g_rank_count; r++) if (g_rank_pids[r] > 0) kill(g_rank_pids[r], sig);
}

static int g_marked;   // the latest run's signal a rank reported

int halo_comm_local_signal(void) { return g_forwarded ? g_forwarded : g_marked; }

int halo_comm_local_aborted(halo_comm *c) {
    return c && c->abort == local_abort ? atomic_load(&impl_of(c)->h->aborted) : 0;
}

void halo_comm_local_mark_signal(halo_comm *c, int sig) {
    if (c && c->abort == local_abort) atomic_store(&impl_of(c)->h->signalled, sig);
}

static int exit_code_of(int st) {
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return 255;
}

int halo_comm_run_local(int world, int (*fn)(halo_comm *c, void *arg), void *arg, int *status) {
    if (world < 1 || world > 1024) return halo_fail("local ranks: %d is not in 1..1024", world);
    const size_t bytes = 4096 + (size_t)world * SLOT_BYTES;
    void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return halo_fail("local ranks: cannot map %zu bytes of shared memory: %s", bytes, strerror(errno));
    shm_header *h = mem;
    atomic_init(&h->arrived, 0);
    atomic_init(&h->generation, 0);
    atomic_init(&h->aborted, 0);
    atomic_init(&h->departed, 0);
    atomic_init(&h->signalled, 0);
    h->world = world;
    pid_t *pids = xcalloc((size_t)world, sizeof *pids);
    const pid_t parent = getpid();
    fflush(NULL);   // buffered output would otherwise be written once per child
    g_rank_pids = pids; g_rank_count = world; g_forwarded = 0; g_marked = 0;
    struct sigaction fw = {.sa_handler = forward_signal, .sa_flags = SA_RESTART}, old_int, old_term;
    sigemptyset(&fw.sa_mask);
    sigaction(SIGINT, &fw, &old_int);
    sigaction(SIGTERM, &fw, &old_term);
    int started = 0;
    // SIGINT / SIGTERM held while a rank is forked: the launcher forwards them only once the pid is recorded, and the
    // child restores its own handlers before it can receive one
    sigset_t stop_sigs, was_mask;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGINT);
    sigaddset(&stop_sigs, SIGTERM);
    for (int r = 0; r < world; r++) {
        sigprocmask(SIG_BLOCK, &stop_sigs, &was_mask);
        pid_t p = fork();
        if (p < 0) {
            sigprocmask(SIG_SETMASK, &was_mask, NULL);
            halo_fail("local ranks: fork of rank %d failed: %s", r, strerror(errno));
            atomic_store(&h->aborted, -1);
            break;
        }
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);   // no orphaned ranks when the launcher dies
            if (getppid() != parent) _exit(127);
            sigaction(SIGINT, &old_int, NULL);
            sigaction(SIGTERM, &old_term, NULL);
            setpgid(0, 0);
            sigprocmask(SIG_SETMASK, &was_mask, NULL);
            local_impl li = {.h = h, .slots = (unsigned char *)mem + 4096};
            halo_comm c = {.rank = r, .world = world, .backend = "local", .allreduce = local_allreduce,
                           .reduce_scatter = local_reduce_scatter, .allgather = local_allgather,
                           .broadcast = local_broadcast, .barrier = local_barrier, .abort = local_abort, .impl = &li};
            int rc = fn(&c, arg);
            if (rc) local_abort(&c);
            int none = 0;   // peers still waiting in a collective would wait for this rank for ever
            atomic_compare_exchange_strong(&h->departed, &none, r + 1);
            fflush(NULL);
            _exit(rc == 0 ? 0 : rc > 0 && rc < 126 ? rc : 1);
        }
        pids[r] = p;
        started++;
        setpgid(p, p);   // (also done by the child; whichever runs first)
        sigprocmask(SIG_SETMASK, &was_mask, NULL);
    }
    // Wait for our ranks (polling, so that other children of the process are left alone). Once a rank has failed,
    // the others get HALO_RANK_GRACE_S seconds (default 60) to notice it in their collectives; a rank still running
    // then (blocked where the failure cannot reach it, e.g. inside a GPU collective) is killed.
    int *codes = xcalloc((size_t)world, sizeof *codes), *done = xcalloc((size_t)world, sizeof *done);
    const char *ge = getenv("HALO_RANK_GRACE_S");
    const double grace = ge && atof(ge) > 0 ? atof(ge) : 60;
    struct timespec t_fail = {0}, nap = {0, 1000000};
    for (int left = started; left > 0;) {
        int progressed = 0;
        for (int r = 0; r < started; r++) {
            int st;
            if (done[r] || waitpid(pids[r], &st, WNOHANG) != pids[r]) continue;
            done[r] = 1; left--; progressed = 1;
            codes[r] = exit_code_of(st);
            int expected = 0;
            if (codes[r]) atomic_compare_exchange_strong(&h->aborted, &expected, r + 1);   // wakes the others' barriers
        }
        if (atomic_load(&h->aborted)) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (!t_fail.tv_sec) t_fail = now;
            if (now.tv_sec - t_fail.tv_sec + (now.tv_nsec - t_fail.tv_nsec) * 1e-9 > grace)
                for (int r = 0; r < started; r++) if (!done[r]) kill(pids[r], SIGKILL);
        }
        if (left && !progressed) {
            nanosleep(&nap, NULL);
            if (nap.tv_nsec < 50000000) nap.tv_nsec *= 2;
        } else nap.tv_nsec = 1000000;
    }
    free(done);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    g_rank_pids = NULL; g_rank_count = 0;
    // the rank named is the first to give up (the others then fail in their collectives)
    int bad = atomic_load(&h->aborted) - 1, code = bad >= 0 ? codes[bad] : 0;
    if (status) memcpy(status, codes, sizeof(int) * (size_t)world);
    free(codes);
    free(pids);
    g_marked = atomic_load(&h->signalled);
    munmap(mem, bytes);
    if (started < world) return HALO_ERR;
    if (bad < 0) return HALO_OK;
    if (code > 128) return halo_fail("rank %d of %d was killed by signal %d", bad, world, code - 128);
    return halo_fail("rank %d of %d failed (exit status %d)", bad, world, code);
}

// ---- one rank --------------------------------------------------------------------------------------------------

static int single_allreduce(halo_comm *c, void *buf, size_t n, halo_dtype t, halo_redop op) { return HALO_OK; }
static int single_reduce_scatter(halo_comm *c, const void *send, void *recv, size_t n, halo_dtype t) {
    if (send != recv) memmove(recv, send, n * halo_dtype_size(t));
    return HALO_OK;
}
static int single_allgather(halo_comm *c, const void *send, void *recv, size_t bytes) {
    if (send != recv) memmove(recv, send, bytes);
    return HALO_OK;
}
static int single_broadcast(halo_comm *c, void *buf, size_t bytes, int root) {
    return root == 0 ? HALO_OK : halo_fail("broadcast: root %d is not a rank of 1", root);
}
static int single_barrier(halo_comm *c) { return HALO_OK; }
static void single_abort(halo_comm *c) {}

halo_comm *halo_comm_single(void) {
    static halo_comm one = {.rank = 0, .world = 1, .backend = "single", .allreduce = single_allreduce,
                            .reduce_scatter = single_reduce_scatter, .allgather = single_allgather,
                            .broadcast = single_broadcast, .barrier = single_barrier, .abort = single_abort};
    return &one;
}
