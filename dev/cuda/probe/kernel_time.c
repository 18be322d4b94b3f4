// Kernel time of a CUDA program between its cudaProfilerStart and cudaProfilerStop, through CUPTI's activity API
// (for machines without Nsight Systems): loaded with LD_PRELOAD, it records every kernel's GPU start and end, and at
// exit prints, for the kernels that started inside that window, the time by kind (products, attention, ...), the
// GPU-busy time (the union of the kernels' intervals) against the window's length, and the top kernels by time.
// bench_cuda_train brackets its timed steps with cudaProfilerStart / Stop, so "per step" divides by KT_STEPS (5).
// Build and run (dev/cuda/probe/halo_step_kernels.sh does both on the device):
//   cc -O2 -shared -fPIC -I/usr/local/cuda/include -o kt.so dev/cuda/probe/kernel_time.c -L<cupti dir> -lcupti
//   LD_PRELOAD=./kt.so build/bench/bench_cuda_train --no-breakdown ...
#include <cupti.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { uint64_t start, end; int name; } rec;
static rec *g_recs;
static size_t g_nrec, g_cap;
static char **g_names;   // distinct kernel names
static int g_nnames;
static uint64_t g_t0, g_t1;   // the window: cudaProfilerStart's return, cudaProfilerStop's call
static int g_at_exit;

static int name_id(const char *s) {
    for (int i = g_nnames - 1; i >= 0; i--)
        if (!strcmp(g_names[i], s)) return i;
    g_names = realloc(g_names, (size_t)(g_nnames + 1) * sizeof *g_names);
    g_names[g_nnames] = strdup(s);
    return g_nnames++;
}

static void CUPTIAPI buf_request(uint8_t **buf, size_t *size, size_t *max_records) {
    *size = 8u << 20;
    *buf = aligned_alloc(8, *size);
    *max_records = 0;
}

static void CUPTIAPI buf_complete(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid) {
    CUpti_Activity *r = NULL;
    while (cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
        if (r->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && r->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
        const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)r;
        if (g_nrec == g_cap) {
            g_cap = g_cap ? 2 * g_cap : 1 << 16;
            g_recs = realloc(g_recs, g_cap * sizeof *g_recs);
        }
        g_recs[g_nrec++] = (rec){k->start, k->end, name_id(k->name ? k->name : "?")};
    }
    free(buf);
}

static const struct { const char *kind, *pat[8]; } KINDS[] = {   // first match wins
    {"products (cuBLASLt, own INT8)", {"nvjet", "gemm", "cutlass", "xmma", "sm90_", NULL}},
    {"attention", {"attn", "flash", "kv_acc", "q_acc", NULL}},
    {"AdamW, grad norm", {"adamw", "sumsq", NULL}},
    {"HALO quantize / rotate / absmax", {"quant", "amax", "k_rot", "tokrot", "k_rows", "tile8", "transpose", NULL}},
    {"cross-entropy", {"xent", "cross", NULL}},
};
enum { NKIND = sizeof KINDS / sizeof KINDS[0] };

static int kind_of(const char *name) {
    for (int k = 0; k < NKIND; k++)
        for (int j = 0; KINDS[k].pat[j]; j++)
            if (strstr(name, KINDS[k].pat[j])) return k;
    return NKIND;
}

static int by_start(const void *a, const void *b) {
    const rec *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static void report(void) {
    cuptiActivityFlushAll(1);
    const char *e = getenv("KT_STEPS");
    const int steps = e && atoi(e) > 0 ? atoi(e) : 5;
    if (!g_t1) { fprintf(stderr, "kernel_time: no cudaProfilerStop seen\n"); return; }
    qsort(g_recs, g_nrec, sizeof *g_recs, by_start);
    double *by_name = calloc((size_t)g_nnames, sizeof *by_name);
    int *count = calloc((size_t)g_nnames, sizeof *count);
    double kind_ns[NKIND + 1] = {0}, total = 0, busy = 0;
    uint64_t cover = 0;   // end of the union so far
    size_t n = 0;
    for (size_t i = 0; i < g_nrec; i++) {
        const rec *r = &g_recs[i];
        if (r->start < g_t0 || r->start >= g_t1) continue;
        const double d = (double)(r->end - r->start);
        by_name[r->name] += d; count[r->name]++; total += d; n++;
        kind_ns[kind_of(g_names[r->name])] += d;
        const uint64_t s = r->start > cover ? r->start : cover;
        if (r->end > s) busy += (double)(r->end - s);
        if (r->end > cover) cover = r->end;
    }
    const double win = (double)(g_t1 - g_t0);
    printf("\nkernel_time: %zu kernels in the window of %.2f ms (%d steps): per step\n", n, win / 1e6, steps);
    printf("| kind | ms a step | share of kernel time |\n|---|---|---|\n");
    for (int k = 0; k <= NKIND; k++)
        printf("| %s | %.2f | %.1f%% |\n", k < NKIND ? KINDS[k].kind : "other", kind_ns[k] / 1e6 / steps,
               100 * kind_ns[k] / (total > 0 ? total : 1));
    printf("| all kernels | %.2f | |\n| GPU busy (union of kernel intervals) | %.2f | |\n", total / 1e6 / steps,
           busy / 1e6 / steps);
    printf("| window (host time, the steps' syncs included) | %.2f | |\n| GPU idle inside the window | %.2f | |\n",
           win / 1e6 / steps, (win - busy) / 1e6 / steps);
    printf("\ntop kernels (ms a step, launches a step):\n");
    for (int t = 0; t < 30; t++) {
        int best = -1;
        for (int i = 0; i < g_nnames; i++)
            if (count[i] && (best < 0 || by_name[i] > by_name[best])) best = i;
        if (best < 0) break;
        printf("%8.3f %6.1f  %.120s\n", by_name[best] / 1e6 / steps, (double)count[best] / steps, g_names[best]);
        count[best] = 0;
    }
    fflush(stdout);
}

static void CUPTIAPI on_api(void *ud, CUpti_CallbackDomain dom, CUpti_CallbackId id, const void *data) {
    const CUpti_CallbackData *cb = data;
    if (id == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000 && cb->callbackSite == CUPTI_API_EXIT) {
        cuptiGetTimestamp(&g_t0);
        if (!g_at_exit) { atexit(report); g_at_exit = 1; }   // registered after the runtime's own: runs before it
    } else if (id == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000 && cb->callbackSite == CUPTI_API_ENTER) {
        cuptiGetTimestamp(&g_t1);
    }
}

__attribute__((constructor)) static void kt_init(void) {
    CUpti_SubscriberHandle sub;
    if (cuptiActivityRegisterCallbacks(buf_request, buf_complete) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS ||
        cuptiSubscribe(&sub, (CUpti_CallbackFunc)on_api, NULL) != CUPTI_SUCCESS ||
        cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API, CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000) ||
        cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API, CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000))
        fprintf(stderr, "kernel_time: CUPTI setup failed\n");
}
