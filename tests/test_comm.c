// The `local` communicator (src/dist/comm_local.c): forked ranks over shared memory. Every collective against what
// the ranks' seeded inputs imply (fp32 sums in rank order bit for bit, and against float64), sizes below, at and
// above a staging slot, uneven shards; a rank that fails or is killed stops the others' collectives instead of
// hanging them. Ranks count their checks into shared memory; the parent reports them.
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "dist/comm.h"
#include "test.h"
#include "util/error.h"

typedef struct { atomic_int pass, fail; } shared_counts;
static shared_counts *g_counts;

// In a rank: count into the shared tallies as well as the process's own.
#define RCHECK(cond, ...) do { int _ok = (cond); CHECK(_ok, __VA_ARGS__); \
    atomic_fetch_add(_ok ? &g_counts->pass : &g_counts->fail, 1); } while (0)

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}
// rank r's i-th input, reproducible in every rank
static float val_f32(int r, size_t i, uint64_t salt) {
    return (float)((double)(mix(salt * 1000003u + (uint64_t)r * 7919u + i) >> 11) / 9007199254740992.0 * 2.0 - 1.0) *
           (i % 97 == 0 ? 100.0f : 1.0f);
}

typedef struct { size_t n; int root; } sizes;

static int rank_collectives(halo_comm *c, void *arg) {
    const sizes *sz = arg;
    const size_t n = sz->n;
    const int W = c->world, R = c->rank, fail0 = t_fail;   // counts inherited from the parent at the fork
    // allreduce sum f32: bit-identical to summing in rank order, close to the float64 sum
    float *b = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) b[i] = val_f32(R, i, 1);
    int rc = c->allreduce(c, b, n, HALO_F32, HALO_SUM);
    RCHECK(rc == HALO_OK, "rank %d: allreduce: %s", R, halo_error());
    size_t exact = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        float s = val_f32(0, i, 1);
        double d = val_f32(0, i, 1), mag = fabs(d);
        for (int r = 1; r < W; r++) { s += val_f32(r, i, 1); d += val_f32(r, i, 1); mag += fabs(val_f32(r, i, 1)); }
        exact += memcmp(&s, &b[i], 4) == 0;
        double e = fabs(b[i] - d) / (mag + 1e-30);
        if (e > worst) worst = e;
    }
    RCHECK(exact == n, "rank %d of %d: fp32 sum in rank order bit-identical in %zu of %zu", R, W, exact, n);
    RCHECK(worst < 1e-6, "rank %d: fp32 sum vs float64 %.3g (relative to the sum of |terms|)", R, worst);
    // allreduce max f32 with a NaN at one element of one rank
    for (size_t i = 0; i < n; i++) b[i] = val_f32(R, i, 2);
    if (n > 5 && R == W - 1) b[5] = NAN;
    RCHECK(c->allreduce(c, b, n, HALO_F32, HALO_MAX) == HALO_OK, "max");
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        float m = val_f32(0, i, 2);
        for (int r = 1; r < W; r++) m = fmaxf(m, val_f32(r, i, 2));
        ok += (n > 5 && i == 5) ? isnan(b[i]) : b[i] == m;
    }
    RCHECK(ok == n, "rank %d: max in %zu of %zu (NaN kept at 5)", R, ok, n);
    free(b);
    // f64 and i64 sums, a few elements
    double dv[3] = {R + 0.25, -R * 1e10, 1e-300};
    int64_t iv[2] = {(int64_t)R << 40, -R};
    RCHECK(c->allreduce(c, dv, 3, HALO_F64, HALO_SUM) == HALO_OK && c->allreduce(c, iv, 2, HALO_I64, HALO_SUM) == HALO_OK, "f64/i64");
    double tri = (double)W * (W - 1) / 2;
    RCHECK(dv[0] == tri + 0.25 * W && dv[1] == -tri * 1e10 && dv[2] == W * 1e-300, "rank %d: f64 sums %g %g %g", R,
           dv[0], dv[1], dv[2]);
    RCHECK(iv[0] == (int64_t)tri << 40 && iv[1] == -(int64_t)tri, "rank %d: i64 sums", R);
    // reduce-scatter: rank d gets the sum of every rank's piece d
    size_t chunk = halo_shard_chunk(n, W);
    float *send = malloc(sizeof(float) * (chunk * W + 1)), *recv = malloc(sizeof(float) * (chunk + 1));
    for (size_t i = 0; i < chunk * W; i++) send[i] = val_f32(R, i, 3);
    RCHECK(c->reduce_scatter(c, send, recv, chunk, HALO_F32) == HALO_OK, "reduce-scatter");
    exact = 0;
    for (size_t i = 0; i < chunk; i++) {
        float s = val_f32(0, (size_t)R * chunk + i, 3);
        for (int r = 1; r < W; r++) s += val_f32(r, (size_t)R * chunk + i, 3);
        exact += memcmp(&s, &recv[i], 4) == 0;
    }
    RCHECK(exact == chunk, "rank %d: reduce-scatter bit-identical in %zu of %zu", R, exact, chunk);
    free(send); free(recv);
    // allgather of bytes (an odd count), then broadcast from a chosen root
    size_t nb = n / 3 + 1;
    unsigned char *mine = malloc(nb), *all = malloc(nb * W);
    for (size_t i = 0; i < nb; i++) mine[i] = (unsigned char)mix((uint64_t)R * 31 + i);
    RCHECK(c->allgather(c, mine, all, nb) == HALO_OK, "allgather");
    ok = 0;
    for (int r = 0; r < W; r++)
        for (size_t i = 0; i < nb; i++) ok += all[(size_t)r * nb + i] == (unsigned char)mix((uint64_t)r * 31 + i);
    RCHECK(ok == nb * W, "rank %d: allgather %zu of %zu bytes", R, ok, nb * W);
    int root = sz->root % W;
    for (size_t i = 0; i < nb; i++) mine[i] = (unsigned char)(R == root ? mix(i + 77) : 0);
    RCHECK(c->broadcast(c, mine, nb, root) == HALO_OK, "broadcast");
    ok = 0;
    for (size_t i = 0; i < nb; i++) ok += mine[i] == (unsigned char)mix(i + 77);
    RCHECK(ok == nb, "rank %d: broadcast from %d: %zu of %zu bytes", R, root, ok, nb);
    RCHECK(c->broadcast(c, mine, nb, W) == HALO_ERR && strstr(halo_error(), "root"), "a root outside the ranks is refused");
    free(mine); free(all);
    RCHECK(c->barrier(c) == HALO_OK, "rank %d: barrier: %s", R, halo_error());
    return t_fail > fail0 ? 1 : 0;
}

// rank `victim` gives up (returns an error, or kills itself) before the second collective; the others must see
// HALO_ERR there, naming the rank, not hang.
typedef struct { int victim, kill; } failing;
static int rank_failing(halo_comm *c, void *arg) {
    const failing *f = arg;
    double x = 1;
    if (c->allreduce(c, &x, 1, HALO_F64, HALO_SUM) || x != c->world) return 3;
    if (c->rank == f->victim) {
        if (f->kill) raise(SIGKILL);
        return 7;
    }
    int rc = c->allreduce(c, &x, 1, HALO_F64, HALO_SUM);
    char want[64];
    snprintf(want, sizeof want, "rank %d of %d failed", f->victim, c->world);
    RCHECK(rc == HALO_ERR && strstr(halo_error(), want), "rank %d: a failed peer stops the collective: rc %d '%s'",
           c->rank, rc, halo_error());
    return 11;   // a distinct status: these ranks saw the failure
}

// rank 1 fails at once; rank 0 never reaches a collective (stuck elsewhere): the launcher kills it after the grace
static int rank_stuck(halo_comm *c, void *arg) {
    if (c->rank == 1) return 5;
    for (;;) pause();
}

// rank 1 returns 0 at once, rank 0 then waits in a collective rank 1 never makes (ranks out of step): an error
// naming rank 1, not a hang (the alarm ends a hung rank 0)
static int rank_early(halo_comm *c, void *arg) {
    if (c->rank == 1) return 0;
    alarm(20);
    struct timespec ts = {0, 50000000};
    nanosleep(&ts, NULL);
    double x = 1;
    int rc = c->allreduce(c, &x, 1, HALO_F64, HALO_SUM);
    RCHECK(rc == HALO_ERR && strstr(halo_error(), "rank 1 of 2 has finished"), "a collective after a peer returned: "
           "rc %d '%s'", rc, rc ? halo_error() : "");
    RCHECK(c->barrier(c) == HALO_ERR, "and the next one fails at once");
    return 0;
}

static int rank_noop(halo_comm *c, void *arg) { return 0; }

// halo_comm_local_aborted, what a wait outside the local collectives (the NCCL barrier) polls: 0 until rank 1 aborts,
// then 1 + 1 on rank 0 (which never enters a collective again)
static int rank_aborts(halo_comm *c, void *arg) {
    double x = 1;
    if (c->allreduce(c, &x, 1, HALO_F64, HALO_SUM)) return 3;
    int before = halo_comm_local_aborted(c);
    if (c->barrier(c)) return 3;   // both ranks read "not aborted" before rank 1 aborts
    if (c->rank == 1) { halo_comm_abort(c); return 9; }
    int seen = 0;
    for (int i = 0; i < 20000 && !seen; i++) {   // 2 s at most
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
        seen = halo_comm_local_aborted(c);
    }
    RCHECK(before == 0 && seen == 2, "rank 0: aborted %d before, %d after rank 1 aborted (want 0, 2)", before, seen);
    return before == 0 && seen == 2 ? 0 : 4;
}

int main(void) {
    g_counts = mmap(NULL, sizeof *g_counts, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    atomic_init(&g_counts->pass, 0);
    atomic_init(&g_counts->fail, 0);

    // shard ranges cover n exactly once, in order
    for (size_t n = 0; n < 40; n++)
        for (int w = 1; w <= 6; w++) {
            size_t next = 0, c = halo_shard_chunk(n, w);
            int ok = 1;
            for (int r = 0; r < w; r++) {
                size_t lo, hi;
                halo_shard_range(n, w, r, &lo, &hi);
                ok &= lo == next && hi >= lo && hi - lo <= c;
                next = hi;
            }
            CHECK(ok && next == n, "shard ranges of %zu over %d", n, w);
        }

    // slot = 1 MiB = 262,144 floats: below, at, above, several slots; 0 elements; up to 5 ranks
    const size_t ns[] = {0, 1, 1000, 262144, 262145, 700001};
    const int ws[] = {1, 2, 3, 5};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (size_t b = 0; b < sizeof ws / sizeof *ws; b++) {
            if (ns[a] > 300000 && ws[b] == 5) continue;
            sizes sz = {ns[a], (int)(a + b)};
            int st[8] = {0};
            int rc = halo_comm_run_local(ws[b], rank_collectives, &sz, st);
            CHECK(rc == HALO_OK, "collectives n=%zu world=%d: %s", ns[a], ws[b], rc ? halo_error() : "");
        }
    int st1 = -1;
    CHECK(halo_comm_run_local(1, rank_noop, NULL, &st1) == HALO_OK && st1 == 0, "one local rank");

    // a failing rank and a killed rank
    for (int kill = 0; kill <= 1; kill++) {
        failing f = {.victim = 1, .kill = kill};
        int st[3] = {0};
        int rc = halo_comm_run_local(3, rank_failing, &f, st);
        char want[64];
        snprintf(want, sizeof want, kill ? "rank 1 of 3 was killed by signal 9" : "rank 1 of 3 failed (exit status 7)");
        CHECK(rc == HALO_ERR && strstr(halo_error(), want), "%s: '%s'", want, halo_error());
        CHECK(st[1] == (kill ? 128 + SIGKILL : 7) && st[0] == 11 && st[2] == 11, "statuses %d %d %d", st[0], st[1], st[2]);
    }
    int ast[2] = {0};
    halo_comm_run_local(2, rank_aborts, NULL, ast);
    CHECK(ast[0] == 0 && ast[1] == 9, "halo_comm_local_aborted: rank 0 saw rank 1's abort (statuses %d %d)", ast[0],
          ast[1]);
    CHECK(halo_comm_local_aborted(halo_comm_single()) == 0 && halo_comm_local_aborted(NULL) == 0,
          "halo_comm_local_aborted of a non-local communicator: 0");
    setenv("HALO_RANK_GRACE_S", "0.3", 1);
    int sst[2] = {0};
    int src = halo_comm_run_local(2, rank_stuck, NULL, sst);
    CHECK(src == HALO_ERR && strstr(halo_error(), "rank 1 of 2 failed (exit status 5)") && sst[0] == 128 + SIGKILL,
          "a stuck rank is killed after the grace: '%s', statuses %d %d", halo_error(), sst[0], sst[1]);
    unsetenv("HALO_RANK_GRACE_S");
    CHECK(halo_comm_run_local(0, rank_noop, NULL, NULL) == HALO_ERR && strstr(halo_error(), "0 is not in"), "0 ranks");
    int est[2] = {-1, -1};
    CHECK(halo_comm_run_local(2, rank_early, NULL, est) == HALO_OK && est[0] == 0 && est[1] == 0,
          "a rank waiting for one that returned: statuses %d %d", est[0], est[1]);

    // the one-rank communicator: identities
    halo_comm *one = halo_comm_single();
    float v[3] = {1, 2, 3}, g[3];
    CHECK(one->allreduce(one, v, 3, HALO_F32, HALO_SUM) == HALO_OK && v[0] == 1 && v[2] == 3, "single allreduce");
    CHECK(one->allgather(one, v, g, sizeof v) == HALO_OK && memcmp(v, g, sizeof v) == 0, "single allgather");
    CHECK(one->reduce_scatter(one, v, g, 3, HALO_F32) == HALO_OK && memcmp(v, g, sizeof v) == 0, "single reduce-scatter");

    printf("checks in ranks: %d passed, %d failed\n", atomic_load(&g_counts->pass), atomic_load(&g_counts->fail));
    t_pass += atomic_load(&g_counts->pass);
    CHECK(atomic_load(&g_counts->fail) == 0, "%d checks failed in ranks", atomic_load(&g_counts->fail));
    TEST_END();
}
