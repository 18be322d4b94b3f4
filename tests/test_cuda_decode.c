// The GPU KV-cache decoder (src/cuda/decode.cu) against the CPU generator (src/train/generate.c) and the GPU full
// forward: (a) greedy tokens on stories260K (several prompts of different lengths, batched and one at a time, prefill
// in one call and in chunks) equal the CPU's and goldens/stories260K_greedy.json; (b) the decoder's logits at every
// prompt position and every generated step against the CPU model's (relative L2, bf16 tolerance); (c) a random
// Llama-3-style model with GQA and head_dim 64: decoder logits at every position against llama_cuda_forward's, and
// the decoder over the GPU model's weights against one over host-uploaded weights; (d) `halo generate` and `halo eval`
// with --device cuda against --device cpu. Skips without a GPU; `--sanitize` runs (c) only (for compute-sanitizer).
#include <cjson/cJSON.h>
#include "test.h"
#ifdef HALO_CUDA
#include "test_cuda.h"
#include "test_variants.h"
#include "model/llama.h"
#include "train/generate.h"
#include "util/error.h"
#include "util/fileio.h"

enum { NP = 5, NEW = 60 };
// A BF16 decoder may pick the other token where the CPU's top two logits nearly tie; a first divergence is accepted
// only there (the CPU's top-2 gap below max(TIE_GAP, 2 x the largest logit difference between the
// bf16-rounded-weights CPU model and the fp32 one on the same tokens), in logits) and reported.
static const float TIE_GAP = 0.05f;
static float g_tie_gap = 0.05f;

typedef struct {
    int n[NP];
    int32_t *p[NP];
} prompts;

static void make_prompts(prompts *ps, const int32_t *golden, int n_golden, int V) {
    static const int lens[NP] = {0, 1, 2, 13, 37};   // 0: the golden prompt
    unsigned long long s = 11;
    for (int k = 0; k < NP; k++) {
        ps->n[k] = k ? lens[k] : n_golden;
        ps->p[k] = malloc(sizeof(int32_t) * (size_t)ps->n[k]);
        for (int i = 0; i < ps->n[k]; i++)
            ps->p[k][i] = k ? (i == 0 ? 1 : 3 + (int32_t)(t_rng_next(&s) % (unsigned long long)(V - 3))) : golden[i];
    }
}

// CPU greedy continuation with the top-2 gap of each step's logits and the logits themselves (all positions:
// logits[(np + NEW) * V], row t = after token t).
static void cpu_greedy(llama_model *m, const int32_t *p, int np, int32_t *toks, float *gap, float *logits) {
    int V = m->cfg.vocab_size;
    llama_kv_cache kc;
    llama_kv_init(&kc, &m->cfg, np + NEW);
    int32_t tok = 0;
    for (int t = 0; t < np + NEW - 1; t++) {
        tok = t < np ? p[t] : tok;
        float *lg = logits + (size_t)t * V;
        llama_decode_step(m, &kc, tok, t, lg);
        if (t + 1 < np) continue;
        int best = 0, second = -1;
        for (int v = 1; v < V; v++) if (lg[v] > lg[best]) best = v;
        for (int v = 0; v < V; v++) if (v != best && (second < 0 || lg[v] > lg[second])) second = v;
        toks[t + 1 - np] = best;
        gap[t + 1 - np] = lg[best] - lg[second];
        tok = best;
    }
    llama_kv_free(&kc);
}

// 1 when got equals want, or first differs where the CPU's top-2 gap is below g_tie_gap (printed).
static int same_greedy(const char *what, const int32_t *got, const int32_t *want, const float *gap, int n) {
    for (int i = 0; i < n; i++)
        if (got[i] != want[i]) {
            printf("  %s: first difference at generated token %d (gpu %d, cpu %d), CPU top-2 gap %.4f: %s\n", what, i,
                   got[i], want[i], gap[i], gap[i] < g_tie_gap ? "near tie, accepted" : "REAL DIFFERENCE");
            return gap[i] < g_tie_gap;
        }
    return 1;
}

// (a) greedy tokens and (b) logits on stories260K
static void check_stories(const char *model_dir, const char *golden_json) {
    char *text;
    if (halo_read_file(golden_json, &text, NULL) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *jp = cJSON_GetObjectItem(root, "prompt_ids"), *jw = cJSON_GetObjectItem(root, "greedy_ids");
    if (!cJSON_IsArray(jp) || !cJSON_IsArray(jw)) { CHECK(0, "golden fields"); cJSON_Delete(root); return; }
    int ngp = cJSON_GetArraySize(jp), ngw = cJSON_GetArraySize(jw);
    int32_t gp[64], gw[128];
    for (int i = 0; i < ngp && i < 64; i++) gp[i] = cJSON_GetArrayItem(jp, i)->valueint;
    for (int i = 0; i < ngw && i < 128; i++) gw[i] = cJSON_GetArrayItem(jw, i)->valueint;
    cJSON_Delete(root);
    CHECK(ngw - ngp == NEW, "golden holds %d generated tokens", ngw - ngp);
    llama_model m;
    if (llama_load(&m, model_dir) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    int V = m.cfg.vocab_size, L = 37 + NEW;
    prompts ps;
    make_prompts(&ps, gp, ngp, V);
    int32_t cpu_t[NP][NEW];
    float gap[NP][NEW];
    float *cpu_lg[NP];
    for (int k = 0; k < NP; k++) {
        cpu_lg[k] = malloc(sizeof(float) * (size_t)(ps.n[k] + NEW) * V);
        cpu_greedy(&m, ps.p[k], ps.n[k], cpu_t[k], gap[k], cpu_lg[k]);
        // the CPU generator itself, as `halo generate` runs it, gives the same tokens
        gen_options o = gen_options_default();
        o.max_new_tokens = NEW; o.ignore_eos = 1;
        int32_t t2[NEW];
        int n2 = 0;
        CHECK(gen_generate(&m, ps.p[k], ps.n[k], &o, t2, &n2) == HALO_OK && n2 == NEW &&
              !memcmp(t2, cpu_t[k], sizeof t2), "CPU reference of prompt %d", k);
    }
    CHECK(same_greedy("CPU vs golden", cpu_t[0], gw + ngp, gap[0], NEW), "CPU greedy vs golden");

    // Yardstick for BF16 on this tiny model (dim 64): the CPU model with only its weights rounded to bf16, on each
    // prompt + the CPU's tokens, against the fp32 CPU logits row by row (measured 2026-12-02: worst row 0.0204,
    // largest logit difference 0.228). The decoder also rounds activations, so its bound is 4x that (as for the GPU
    // model's golden gradients in test_cuda_model.c) and a divergence counts as a near tie below 2x the difference.
    double ref_worst = 0, ref_maxabs = 0;
    {
        float *orig = malloc(sizeof(float) * m.n_params);
        memcpy(orig, m.params, sizeof(float) * m.n_params);
        t_round_bf16(m.params, m.n_params);
        for (int k = 0; k < NP; k++) {
            int T = ps.n[k] + NEW - 1;
            llama_kv_cache kc;
            llama_kv_init(&kc, &m.cfg, T);
            float *a = malloc(sizeof(float) * V);
            for (int t = 0; t < T; t++) {
                int32_t tk = t < ps.n[k] ? ps.p[k][t] : cpu_t[k][t - ps.n[k]];
                llama_decode_step(&m, &kc, tk, t, a);
                const float *r = cpu_lg[k] + (size_t)t * V;
                double e = rel_l2_f(a, r, V);
                if (e > ref_worst || isnan(e)) ref_worst = isnan(e) ? INFINITY : e;
                for (int v = 0; v < V; v++) ref_maxabs = fmax(ref_maxabs, fabs((double)a[v] - r[v]));
            }
            free(a);
            llama_kv_free(&kc);
        }
        memcpy(m.params, orig, sizeof(float) * m.n_params);
        free(orig);
    }
    // For the record (not a bound): the GPU training model's forward (llama_cuda_forward) on the same tokens.
    {
        llama_cuda *g;
        llama_cuda_opts go;
        memset(&go, 0, sizeof go);
        go.max_B = 1; go.max_T = L;
        if (llama_cuda_init(&g, &m, &go) == HALO_OK) {
            printf("GPU training forward vs CPU, worst row per prompt:");
            for (int k = 0; k < NP; k++) {
                int T = ps.n[k] + NEW - 1;
                halo_batch b;
                halo_batch_alloc(&b, 1, T);
                for (int i = 0; i < T; i++) b.input_ids[i] = i < ps.n[k] ? ps.p[k][i] : cpu_t[k][i - ps.n[k]];
                halo_batch_shift_targets(&b);
                float *gl = malloc(sizeof(float) * (size_t)T * V);
                llama_cuda_forward(g, &b, gl);
                double w = 0;
                int wr = 0;
                for (int i = 0; i < T; i++) {
                    double e = rel_l2_f(gl + (size_t)i * V, cpu_lg[k] + (size_t)i * V, V);
                    if (e > w) { w = e; wr = i; }
                }
                printf(" %.3g (row %d of %d)", w, wr, T);
                free(gl);
                halo_batch_free(&b);
            }
            printf("\n");
            llama_cuda_free(g);
        } else CHECK(0, "%s", halo_error());
    }
    g_tie_gap = fmaxf(TIE_GAP, (float)(2 * ref_maxabs));
    double lg_bound = fmax(2e-2, 4 * ref_worst);
    printf("yardstick: CPU with bf16-rounded weights vs fp32, worst row %.3g, largest logit difference %.3g -> logit bound %.3g, "
           "near-tie gap %.3g\n", ref_worst, ref_maxabs, lg_bound, g_tie_gap);

    // (a) cuda_generate: all prompts at once and one at a time, prefill in one call (512 rows) and in chunks of 8
    gen_options o = gen_options_default();
    o.max_new_tokens = NEW; o.ignore_eos = 1;
    int32_t gpu_t[NP][NEW];
    int32_t *outs[NP];
    int nout[NP];
    for (int k = 0; k < NP; k++) outs[k] = gpu_t[k];
    static const int rows[2] = {512, 8};
    for (int r = 0; r < 2; r++)
        for (int batched = 1; batched >= 0; batched--) {
            cuda_decoder *d;
            if (cuda_decoder_init_host(&d, &m, batched ? NP : 1, L, rows[r]) != HALO_OK) {
                CHECK(0, "%s", halo_error()); continue;
            }
            memset(gpu_t, 0xff, sizeof gpu_t);
            int rc = HALO_OK;
            if (batched) rc = cuda_generate(d, NP, (const int32_t *const *)ps.p, ps.n, &o, outs, nout);
            else
                for (int k = 0; k < NP && rc == HALO_OK; k++)
                    rc = cuda_generate(d, 1, (const int32_t *const *)&ps.p[k], &ps.n[k], &o, &outs[k], &nout[k]);
            CHECK(rc == HALO_OK, "cuda_generate: %s", halo_error());
            int all = 1;
            for (int k = 0; k < NP; k++) {
                char what[96];
                snprintf(what, sizeof what, "%s, %d rows per call, prompt %d (%d tokens)",
                         batched ? "batched" : "one at a time", rows[r], k, ps.n[k]);
                int ok = nout[k] == NEW && same_greedy(what, gpu_t[k], cpu_t[k], gap[k], NEW);
                CHECK(ok, "greedy GPU vs CPU: %s", what);
                all &= ok && !memcmp(gpu_t[k], cpu_t[k], sizeof gpu_t[k]);
            }
            int gold = same_greedy("GPU vs golden", gpu_t[0], gw + ngp, gap[0], NEW);
            CHECK(gold, "greedy GPU vs goldens/stories260K_greedy.json");
            printf("greedy %s, %3d rows per call: %d prompts x %d tokens %s the CPU; golden %s\n",
                   batched ? "batched      " : "one at a time", rows[r], NP, NEW, all ? "identical to" : "near-ties vs",
                   !memcmp(gpu_t[0], gw + ngp, sizeof gpu_t[0]) ? "identical" : gold ? "near tie" : "DIFFERS");
            cuda_decoder_free(d);
        }

    // sampling: same seed, same tokens on two runs; agreement with the CPU sampler printed
    {
        gen_options so = o;
        so.temperature = 0.8f; so.top_k = 40; so.top_p = 0.9f; so.seed = 7;
        int32_t a[NEW], b[NEW], c[NEW], *pa = a, *pb = b;
        int na, nb, nc;
        cuda_decoder *d;
        if (cuda_decoder_init_host(&d, &m, 1, L, 512) == HALO_OK) {
            const int32_t *p0 = ps.p[3];
            CHECK(cuda_generate(d, 1, &p0, &ps.n[3], &so, &pa, &na) == HALO_OK, "%s", halo_error());
            CHECK(cuda_generate(d, 1, &p0, &ps.n[3], &so, &pb, &nb) == HALO_OK, "%s", halo_error());
            CHECK(na == NEW && nb == NEW && !memcmp(a, b, sizeof a), "sampled GPU generation is not reproducible");
            gen_generate(&m, p0, ps.n[3], &so, c, &nc);
            int agree = 0;
            while (agree < NEW && a[agree] == c[agree]) agree++;
            printf("sampled (T 0.8, top-k 40, top-p 0.9, seed 7): GPU reproducible; first %d of %d tokens equal the "
                   "CPU's\n", agree, NEW);
            cuda_decoder_free(d);
        } else CHECK(0, "%s", halo_error());
    }

    // (b) logits at every prompt position (one prefill call per prompt, all rows out) and every generated step
    // (one row per sequence, the CPU's tokens fed back), all sequences in one decoder
    cuda_decoder *d;
    if (cuda_decoder_init_host(&d, &m, NP, L, 64) != HALO_OK) { CHECK(0, "%s", halo_error()); goto out; }
    double worst_pre = 0, worst_step = 0;
    int argmax_bad = 0;
    float *lg = malloc(sizeof(float) * (size_t)64 * V);
    int32_t seq[64], tok[64], pos[64], orow[64];
    for (int k = 0; k < NP; k++) {
        int n = ps.n[k];
        for (int i = 0; i < n; i++) { seq[i] = k; tok[i] = ps.p[k][i]; pos[i] = i; orow[i] = i; }
        CHECK(cuda_decoder_forward(d, n, seq, tok, pos, n, orow, lg) == HALO_OK, "%s", halo_error());
        for (int i = 0; i < n; i++) {
            double e = rel_l2_f(lg + (size_t)i * V, cpu_lg[k] + (size_t)i * V, V);
            if (e > worst_pre || isnan(e)) worst_pre = isnan(e) ? INFINITY : e;
        }
    }
    for (int t = 0; t < NEW - 1; t++) {
        for (int k = 0; k < NP; k++) { seq[k] = k; tok[k] = cpu_t[k][t]; pos[k] = ps.n[k] + t; orow[k] = k; }
        CHECK(cuda_decoder_forward(d, NP, seq, tok, pos, NP, orow, lg) == HALO_OK, "%s", halo_error());
        // the same rows again (the cache gets the same K/V): the device argmax picks the host argmax of these logits
        int32_t nx[NP];
        CHECK(cuda_decoder_forward_greedy(d, NP, seq, tok, pos, NP, orow, nx) == HALO_OK, "%s", halo_error());
        for (int k = 0; k < NP; k++) {
            double e = rel_l2_f(lg + (size_t)k * V, cpu_lg[k] + (size_t)(ps.n[k] + t) * V, V);
            if (e > worst_step || isnan(e)) worst_step = isnan(e) ? INFINITY : e;
            const float *r = lg + (size_t)k * V;
            int best = 0;
            for (int v = 1; v < V; v++) if (r[v] > r[best]) best = v;
            argmax_bad += nx[k] != best;
        }
    }
    printf("stories260K logits vs CPU (relative L2, worst row): prefill %.3g, decode steps %.3g (bound %.3g = "
           "max(2e-2, 4 x the bf16-weights yardstick))\n", worst_pre, worst_step, lg_bound);
    CHECK(worst_pre <= lg_bound, "prefill logits vs CPU: %.3g", worst_pre);
    CHECK(worst_step <= lg_bound, "decode-step logits vs CPU: %.3g", worst_step);
    CHECK(argmax_bad == 0, "device argmax differs from the host argmax of the same logits in %d of %d rows", argmax_bad,
          NP * (NEW - 1));
    // out-of-range input is refused with a message, nothing run
    seq[0] = NP; tok[0] = 1; pos[0] = 0;
    CHECK(cuda_decoder_forward(d, 1, seq, tok, pos, 0, NULL, NULL) == HALO_ERR, "sequence out of range accepted");
    seq[0] = 0; pos[0] = L;
    CHECK(cuda_decoder_forward(d, 1, seq, tok, pos, 0, NULL, NULL) == HALO_ERR, "position out of range accepted");
    free(lg);
    cuda_decoder_free(d);

    // (b2) decode steps replayed from CUDA graphs (the default) give the eager launches' logits and greedy tokens bit
    // for bit: the same prompts and fed-back tokens through a decoder with graphs and one without
    {
        cuda_decoder *dg = NULL, *de = NULL;
        if (cuda_decoder_init_host(&dg, &m, NP, L, 64) != HALO_OK || cuda_decoder_init_host(&de, &m, NP, L, 64) != HALO_OK) {
            CHECK(0, "%s", halo_error());
        } else {
            cuda_decoder_graphs(de, 0);
            float *la = malloc(sizeof(float) * (size_t)NP * V), *lb = malloc(sizeof(float) * (size_t)NP * V);
            long bad_lg = 0, bad_tok = 0;
            int ok = 1;
            for (int k = 0; k < NP && ok; k++) {
                int n = ps.n[k];
                for (int i = 0; i < n; i++) { seq[i] = k; tok[i] = ps.p[k][i]; pos[i] = i; }
                ok = cuda_decoder_forward(dg, n, seq, tok, pos, 0, NULL, NULL) == HALO_OK &&
                     cuda_decoder_forward(de, n, seq, tok, pos, 0, NULL, NULL) == HALO_OK;
            }
            for (int t = 0; t < NEW - 1 && ok; t++) {   // step 0 eager, 1 captured, the rest replayed
                for (int k = 0; k < NP; k++) { seq[k] = k; tok[k] = cpu_t[k][t]; pos[k] = ps.n[k] + t; orow[k] = k; }
                int32_t ga[NP], gb[NP];
                ok = cuda_decoder_forward(dg, NP, seq, tok, pos, NP, orow, la) == HALO_OK &&
                     cuda_decoder_forward(de, NP, seq, tok, pos, NP, orow, lb) == HALO_OK &&
                     cuda_decoder_forward_greedy(dg, NP, seq, tok, pos, NP, orow, ga) == HALO_OK &&
                     cuda_decoder_forward_greedy(de, NP, seq, tok, pos, NP, orow, gb) == HALO_OK;
                for (size_t i = 0; ok && i < (size_t)NP * V; i++) bad_lg += memcmp(&la[i], &lb[i], 4) != 0;
                for (int k = 0; ok && k < NP; k++) bad_tok += ga[k] != gb[k];
            }
            CHECK(ok, "graph vs eager decoding: %s", halo_error());
            printf("decode steps from CUDA graphs vs eager launches, %d steps x %d sequences: %ld logits and %ld greedy "
                   "tokens differ\n", NEW - 1, NP, bad_lg, bad_tok);
            CHECK(bad_lg == 0 && bad_tok == 0, "graph replay differs from eager decoding (%ld logits, %ld tokens)",
                  bad_lg, bad_tok);
            free(la); free(lb);
        }
        cuda_decoder_free(dg);
        cuda_decoder_free(de);
    }
out:
    for (int k = 0; k < NP; k++) { free(ps.p[k]); free(cpu_lg[k]); }
    llama_free(&m);
}

// (c) random Llama-3-style model (GQA 4/2, head_dim 64, untied head, llama3 RoPE scaling): decoder logits at every
// position vs the GPU full forward; arch: T_LLAMA, or a variant (test_variants.h)
static void check_random_gqa(int arch) {
    llama_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 1000; c.dim = 256; c.hidden_dim = 688; c.n_layers = 3; c.n_heads = 4; c.n_kv_heads = 2;
    c.head_dim = 64; c.max_pos = 256; c.norm_eps = 1e-5f; c.rope_theta = 500000.f; c.tie_embeddings = 0;
    c.rope_scaling = ROPE_SCALING_LLAMA3; c.rope_factor = 8; c.rope_low_freq_factor = 1; c.rope_high_freq_factor = 4;
    c.rope_original_max_pos = 64;
    c.bos_id = c.eos_id = -1;
    t_make_variant(&c, arch);
    llama_model m;
    if (llama_init(&m, &c) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    llama_init_random(&m, 5);
    for (int i = 0; i < m.n_table; i++)   // std 0.1: attention far from uniform, logits of order 1
        if (m.table[i].ndim == 2) for (size_t j = 0; j < m.table[i].numel; j++) m.params[m.table[i].offset + j] *= 5;
    t_draw_variant_tensors(&m, 5);
    const int B = 2, T = 48, V = c.vocab_size, P0 = 5;
    halo_batch b;
    halo_batch_alloc(&b, B, T);
    unsigned long long s = 21;
    for (int i = 0; i < B * T; i++) b.input_ids[i] = (int32_t)(t_rng_next(&s) % (unsigned long long)V);
    halo_batch_shift_targets(&b);
    llama_cuda *g;
    llama_cuda_opts o;
    memset(&o, 0, sizeof o);
    o.max_B = B; o.max_T = T;
    if (llama_cuda_init(&g, &m, &o) != HALO_OK) { CHECK(0, "%s", halo_error()); halo_batch_free(&b); llama_free(&m); return; }
    float *full = malloc(sizeof(float) * (size_t)B * T * V);
    llama_cuda_forward(g, &b, full);
    cuda_decoder *dv, *dh;
    CHECK(cuda_decoder_init(&dv, g, B, T, 4) == HALO_OK, "%s", halo_error());
    CHECK(cuda_decoder_init_host(&dh, &m, B, T, 4) == HALO_OK, "%s", halo_error());
    float *lv = malloc(sizeof(float) * (size_t)B * T * V), *lh = malloc(sizeof(float) * (size_t)B * T * V);
    // prefill the first P0 tokens of both rows in calls of 4 rows (every row out; a call may hold both sequences),
    // then one token per row and step
    int32_t seq[4], tok[4], pos[4], orow[4];
    int n = 0;
    for (int r = 0; r < B; r++)
        for (int t = 0; t < P0; t++) {
            seq[n] = r; tok[n] = b.input_ids[r * T + t]; pos[n] = t; orow[n] = n;
            if (++n == 4 || (r == B - 1 && t == P0 - 1)) {
                float *tv = malloc(sizeof(float) * (size_t)n * V), *th = malloc(sizeof(float) * (size_t)n * V);
                CHECK(cuda_decoder_forward(dv, n, seq, tok, pos, n, orow, tv) == HALO_OK, "%s", halo_error());
                CHECK(cuda_decoder_forward(dh, n, seq, tok, pos, n, orow, th) == HALO_OK, "%s", halo_error());
                for (int i = 0; i < n; i++) {
                    memcpy(lv + ((size_t)seq[i] * T + pos[i]) * V, tv + (size_t)i * V, sizeof(float) * V);
                    memcpy(lh + ((size_t)seq[i] * T + pos[i]) * V, th + (size_t)i * V, sizeof(float) * V);
                }
                free(tv); free(th);
                n = 0;
            }
        }
    for (int t = P0; t < T; t++) {
        for (int r = 0; r < B; r++) { seq[r] = r; tok[r] = b.input_ids[r * T + t]; pos[r] = t; orow[r] = r; }
        float tv[2 * 1000], th[2 * 1000];
        CHECK(cuda_decoder_forward(dv, B, seq, tok, pos, B, orow, tv) == HALO_OK, "%s", halo_error());
        CHECK(cuda_decoder_forward(dh, B, seq, tok, pos, B, orow, th) == HALO_OK, "%s", halo_error());
        for (int r = 0; r < B; r++) {
            memcpy(lv + ((size_t)r * T + t) * V, tv + (size_t)r * V, sizeof(float) * V);
            memcpy(lh + ((size_t)r * T + t) * V, th + (size_t)r * V, sizeof(float) * V);
        }
    }
    double worst = 0, worst_h = 0;
    int wpos = -1;
    for (int i = 0; i < B * T; i++) {
        double e = rel_l2_f(lv + (size_t)i * V, full + (size_t)i * V, V);
        double eh = rel_l2_f(lh + (size_t)i * V, lv + (size_t)i * V, V);
        if (e > worst || isnan(e)) { worst = isnan(e) ? INFINITY : e; wpos = i; }
        if (eh > worst_h || isnan(eh)) worst_h = isnan(eh) ? INFINITY : eh;
    }
    printf("random GQA hd64 model%s: decoder vs llama_cuda_forward logits, worst of %d positions %.3g (row %d pos %d; "
           "bound 2e-2); host-uploaded vs GPU-model weights %.3g (bound 1e-5)\n",
           arch == T_QWEN2 ? " (Qwen2 biases)" : arch == T_QWEN3 ? " (Qwen3 q/k norms)"
           : arch == T_SMOLLM3 ? " (SmolLM3 layers without RoPE)" : "", B * T, worst, wpos / T,
           wpos % T, worst_h);
    CHECK(worst <= 2e-2, "decoder vs full forward logits: %.3g", worst);
    CHECK(worst_h <= 1e-5, "host-uploaded decoder vs GPU-model decoder: %.3g", worst_h);
    cuda_decoder_free(dv);
    cuda_decoder_free(dh);
    llama_cuda_free(g);
    free(full); free(lv); free(lh);
    halo_batch_free(&b);
    llama_free(&m);
}

// stdout of a shell command (malloc'ed), its exit status in *rc
static char *run_capture(const char *cmd, int *rc) {
    FILE *f = popen(cmd, "r");
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!f) { *rc = -1; buf[0] = 0; return buf; }
    size_t k;
    while ((k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (n + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    *rc = pclose(f);
    return buf;
}

// (d) the verbs: `halo generate --device cuda` prints what --device cpu prints (greedy, golden prompt), and
// `halo eval --task viggo --device cuda --batch 8` writes the CPU's predictions
static void check_cli(void) {
    const char *bin = getenv("BUILD"), *model = test_shared_path("models/stories260K");
    const char *data = test_shared_path("data/viggo/valid.csv");
    bin = bin && *bin ? bin : "build";
    char cmd[8192], pred[2][256];
    char *out[2];
    int rc[2];
    for (int dev = 0; dev < 2; dev++) {
        snprintf(cmd, sizeof cmd, "%s/halo generate --model %s --prompt-ids 1,403,407,261,378 --max-new-tokens 60 "
                 "--ignore-eos --device %s 2>/dev/null", bin, model, dev ? "cuda" : "cpu");
        out[dev] = run_capture(cmd, &rc[dev]);
    }
    CHECK(rc[0] == 0 && rc[1] == 0 && out[0][0] && !strcmp(out[0], out[1]),
          "halo generate --device cuda (rc %d) vs cpu (rc %d):\n%s\n%s", rc[1], rc[0], out[1], out[0]);
    printf("halo generate --device cuda: %s the CPU's output\n", !strcmp(out[0], out[1]) ? "identical to" : "DIFFERS from");
    free(out[0]); free(out[1]);
    if (access(data, R_OK) != 0) { SKIP("%s not found: eval check skipped", data); return; }
    for (int dev = 0; dev < 2; dev++) {
        snprintf(pred[dev], sizeof pred[dev], "/tmp/halo_decode_pred_%d_%d.jsonl", (int)getpid(), dev);
        snprintf(cmd, sizeof cmd, "%s/halo eval --model %s --data %s --all --preset viggo --prompt-template "
                 "'Sentence: {ref} Meaning:' --task viggo --limit 20 --max-new-tokens 48 --batch 8 --device %s "
                 "--predictions %s 2>/dev/null", bin, model, data, dev ? "cuda" : "cpu", pred[dev]);
        out[dev] = run_capture(cmd, &rc[dev]);
    }
    CHECK(rc[0] == 0 && rc[1] == 0 && strstr(out[1], "accuracy"), "halo eval --device cuda (rc %d) / cpu (rc %d): %s",
          rc[1], rc[0], out[1]);
    char *a, *b;
    size_t na = 0, nb = 0;
    int same = 0, lines = 0;
    if (halo_read_file(pred[0], &a, &na) == HALO_OK && halo_read_file(pred[1], &b, &nb) == HALO_OK) {
        char *sa, *sb, *la = strtok_r(a, "\n", &sa), *lb = strtok_r(b, "\n", &sb);
        for (; la && lb; la = strtok_r(NULL, "\n", &sa), lb = strtok_r(NULL, "\n", &sb), lines++) same += !strcmp(la, lb);
        free(a); free(b);
    }
    // The CLI wiring check (batched prompts, formatting, output file). Token-level agreement is (a)'s job: over 48
    // greedy tokens of this dim-64 model, near ties within BF16's error part many predictions (H200, 2026-12-02:
    // 12 of 20 identical, the rest diverging after a common start), so half must match, and every line must exist.
    printf("halo eval --task viggo --device cuda --batch 8: %d of %d predictions identical to the CPU's (need >= 10)\n",
           same, lines);
    CHECK(lines == 20 && same >= 10, "eval predictions GPU vs CPU: %d of %d identical", same, lines);
    free(out[0]); free(out[1]);
    remove(pred[0]); remove(pred[1]);
}
#endif

int main(int argc, char **argv) {
#ifndef HALO_CUDA
    (void)argc; (void)argv;
    SKIP("built without CUDA (no nvcc, or SAN=1): CUDA decoder tests skipped");
    TEST_END();
#else
    char gpu_why[256];
    if (!cuda_device_usable(gpu_why, sizeof gpu_why)) { SKIP("%s: CUDA decoder tests skipped", gpu_why); TEST_END(); }
    check_random_gqa(T_LLAMA);
    check_random_gqa(T_QWEN2);
    check_random_gqa(T_QWEN3);
    check_random_gqa(T_SMOLLM3);
    if (argc > 1 && !strcmp(argv[1], "--sanitize")) { cuda_matmul_shutdown(); TEST_END(); }   // compute-sanitizer
    if (!test_shared()) SKIP("shared data folder not found (set HALO_SHARED); stories260K checks skipped");
    else {
        check_stories(test_shared_path("models/stories260K"), test_shared_path("goldens/stories260K_greedy.json"));
        check_cli();
    }
    TEST_END();
#endif
}
