// Data-parallel training on this machine's CPUs (halo_comm_run_local, forked ranks): a random-weight ~26M-parameter
// Llama in HALO INT8 level 2, one process with accumulation W against W ranks with whole moments, sharded moments and
// HALO weights gathered in 8 bits. Prints per configuration: ms per step, tokens/s, AdamW moments held per rank, the
// bytes a rank sends per step into all-reduces and all-gathers and the time it spends in them, waiting for the
// others included (counted by a wrapper around the communicator), peak resident memory per rank and the final loss
// (the same run in every row, up to fp32 summation order).
// Usage: build/bench/bench_dist_cpu [steps] [ranks]
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <omp.h>
#include <sched.h>
#include "bench.h"
#include "dist/comm.h"
#include "model/linear.h"
#include "train/rng.h"
#include "train/trainer.h"
#include "util/error.h"

// ---- a communicator that counts what this rank sends ----------------------------------------------------------
typedef struct { halo_comm *inner; double reduce_bytes, gather_bytes, seconds; } counting;
#define TIMED(call) do { double _t = now_s(); int _rc = (call); cnt(c)->seconds += now_s() - _t; return _rc; } while (0)
static counting *cnt(halo_comm *c) { return c->impl; }
static int c_allreduce(halo_comm *c, void *b, size_t n, halo_dtype t, halo_redop op) {
    cnt(c)->reduce_bytes += (double)n * halo_dtype_size(t);
    TIMED(cnt(c)->inner->allreduce(cnt(c)->inner, b, n, t, op));
}
static int c_reduce_scatter(halo_comm *c, const void *s, void *r, size_t n, halo_dtype t) {
    cnt(c)->reduce_bytes += (double)n * c->world * halo_dtype_size(t);
    TIMED(cnt(c)->inner->reduce_scatter(cnt(c)->inner, s, r, n, t));
}
static int c_allgather(halo_comm *c, const void *s, void *r, size_t bytes) {
    cnt(c)->gather_bytes += (double)bytes;
    TIMED(cnt(c)->inner->allgather(cnt(c)->inner, s, r, bytes));
}
static int c_broadcast(halo_comm *c, void *b, size_t bytes, int root) { return cnt(c)->inner->broadcast(cnt(c)->inner, b, bytes, root); }
static int c_barrier(halo_comm *c) { return cnt(c)->inner->barrier(cnt(c)->inner); }
static void c_abort(halo_comm *c) { cnt(c)->inner->abort(cnt(c)->inner); }

// ---- the run --------------------------------------------------------------------------------------------------
typedef struct { uint64_t rng; int vocab; } rand_rows;
static int rows_next(void *ctx, halo_batch *b) {
    rand_rows *s = ctx;
    halo_rng r = {s->rng};
    for (int i = 0; i < b->B * b->T; i++) b->input_ids[i] = (int32_t)halo_rng_below(&r, (uint64_t)s->vocab);
    halo_batch_shift_targets(b);
    s->rng = r.s;
    return HALO_OK;
}

typedef struct {
    double ms, comm_ms, reduce_mb, gather_mb, moments_mb, rss_mb;
    float loss;
    atomic_int failed;
} result;
typedef struct { int world, accum, shard, gather8, steps, threads; result *out; } job;

static int rank_run(halo_comm *inner, void *arg) {
    const job *j = arg;
    omp_set_num_threads(j->threads);
    llama_config c = {.vocab_size = 32000, .dim = 384, .hidden_dim = 1152, .n_layers = 8, .n_heads = 6,
                      .n_kv_heads = 2, .head_dim = 64, .max_pos = 1024, .norm_eps = 1e-5f, .rope_theta = 10000.0f,
                      .tie_embeddings = 1, .bos_id = 1, .eos_id = 2};
    llama_model m;
    if (llama_init(&m, &c) != HALO_OK) return 1;
    llama_init_random(&m, 1);
    model_halo_config hc = model_halo_config_default();
    hc.prec = HALO_PREC_INT8; hc.level = 2;
    if (llama_set_halo(&m, &hc)) return 1;
    counting k = {.inner = inner};
    halo_comm cc = {.rank = inner->rank, .world = inner->world, .backend = "counting", .allreduce = c_allreduce,
                    .reduce_scatter = c_reduce_scatter, .allgather = c_allgather, .broadcast = c_broadcast,
                    .barrier = c_barrier, .abort = c_abort, .impl = &k};
    train_options o = train_options_default();
    o.steps = j->steps + 1; o.batch_size = 4; o.seq_len = 256; o.grad_accum = j->accum; o.lr = 1e-4; o.log_every = 0;
    rand_rows src = {.rng = 7, .vocab = c.vocab_size};
    trainer t;
    train_dist_options d = {.shard_optimizer = j->shard, .gather_8bit = j->gather8};
    int rc = trainer_init(&t, &m, &o, (train_data_source){&src, rows_next, NULL, NULL});
    if (!rc) rc = trainer_set_comm(&t, &cc, &d);
    train_step_info s;
    if (!rc) rc = trainer_step(&t, &s);   // warm-up (allocations)
    k.reduce_bytes = k.gather_bytes = k.seconds = 0;
    double t0 = now_s();
    for (int i = 0; !rc && i < j->steps; i++) rc = trainer_step(&t, &s);
    double dt = (now_s() - t0) / j->steps;
    if (rc) { fprintf(stderr, "rank %d: %s\n", inner->rank, halo_error()); atomic_store(&j->out->failed, 1); return 1; }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (inner->rank == 0) {
        result *r = j->out;
        r->ms = dt * 1e3;
        r->comm_ms = k.seconds / j->steps * 1e3;
        r->reduce_mb = k.reduce_bytes / j->steps / 1048576.0;
        r->gather_mb = k.gather_bytes / j->steps / 1048576.0;
        r->moments_mb = (double)t.opt.n_owned * 8 / 1048576.0;
        r->rss_mb = ru.ru_maxrss / 1024.0;
        r->loss = s.loss;
    }
    trainer_free(&t);
    llama_free(&m);
    return 0;
}

static int cores(void) {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
}

int main(int argc, char **argv) {
    const int steps = argc > 1 ? atoi(argv[1]) : 3, W = argc > 2 ? atoi(argv[2]) : 2, n = cores();
    result *res = mmap(NULL, sizeof *res, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    printf("Data parallel on the CPU: random Llama ~26M (dim 384, 8 layers, vocab 32000), HALO INT8 level 2, %d x 4 x 256 "
           "tokens a step, %d cores, mean of %d steps after 1 warm-up; per-rank bytes sent per step\n\n", W, n, steps);
    printf("| %-44s | %8s | %12s | %9s | %12s | %12s | %12s | %11s | %8s |\n", "configuration", "ms/step",
           "in collect.", "tokens/s", "moments MiB", "reduced MiB", "gathered MiB", "peak RSS MiB", "loss");
    printf("|----------------------------------------------|----------|--------------|-----------|--------------|--------------|--------------|-------------|----------|\n");
    const struct { const char *name; int world, accum, shard, gather8; } cfg[] = {
        {"1 process, accumulation W", 1, W, 0, 0},
        {"W ranks, whole moments", W, 1, 0, 0},
        {"W ranks, sharded moments", W, 1, 1, 0},
        {"W ranks, sharded, weights in 8 bits", W, 1, 1, 1},
    };
    for (size_t i = 0; i < sizeof cfg / sizeof *cfg; i++) {
        memset(res, 0, sizeof *res);
        job j = {.world = cfg[i].world, .accum = cfg[i].accum, .shard = cfg[i].shard, .gather8 = cfg[i].gather8,
                 .steps = steps, .threads = n / cfg[i].world > 0 ? n / cfg[i].world : 1, .out = res};
        if (halo_comm_run_local(j.world, rank_run, &j, NULL) || atomic_load(&res->failed)) {
            printf("| %-44s | failed: %s |\n", cfg[i].name, halo_error());
            continue;
        }
        char name[64];
        snprintf(name, sizeof name, "%s (W = %d)", cfg[i].name, W);
        printf("| %-44s | %8.0f | %12.0f | %9.0f | %12.1f | %12.1f | %12.1f | %11.0f | %8.5f |\n", name, res->ms,
               res->comm_ms, W * 4 * 256 / (res->ms / 1e3), res->moments_mb, res->reduce_mb, res->gather_mb,
               res->rss_mb, res->loss);
    }
    return 0;
}
