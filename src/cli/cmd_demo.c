// `halo demo`: trains a small Llama from scratch on D-digit addition (src/train/task_addition.h) on the CPU (or the
// GPU with --device cuda), evaluates exact-match accuracy on held-out sums with greedy KV-cached generation on the
// CPU, and optionally exports the model. Checkpoint/resume flags make it the end-to-end test of the training loop
// as well.
#include <cblas.h>
#include <cjson/cJSON.h>
#include <omp.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "cli/cli.h"
#include "cli/common.h"
#include "train/checkpoint.h"
#include "train/task_addition.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/json.h"

static void usage(void) {
    printf("usage: halo demo [options]\n"
           "Trains a small Llama from scratch to add D-digit numbers (written least-significant digit first,\n"
           "e.g. 42+917=959 is \"240+719=9590\") over a byte vocabulary, then reports exact-match accuracy\n"
           "on held-out sums.\n\n"
           "  --steps N          optimizer steps (default 800)\n"
           "  --seed S           seed for the weights and the data order (default 1)\n"
           "  --threads N        OpenMP/BLAS threads (default: all cores)\n"
           "  --out DIR          export the trained model as a Hugging Face directory (float32)\n"
           "  --digits D         operand digits, 1..9 (default 3)\n"
           "  --dim N --layers N --heads N --hidden N   model shape (default 128, 2, 4, 344)\n"
           "  --batch N          examples per step (default 128)\n"
           "  --lr X             peak learning rate (default 1e-3; warmup 5%%, cosine to lr/10)\n"
           "  --eval-every N     evaluate every N steps (default 200; always at the end)\n"
           "  --eval-n N         held-out examples per evaluation (default 200)\n"
           "  --show N           generated answers to print at the end (default 8)\n"
           "  --ckpt-dir DIR     write checkpoints there (every --ckpt-every steps, and at the end)\n"
           "  --ckpt-every N     (default 0: only at the end)\n"
           "  --keep N           keep the newest N checkpoints (default 0: all)\n"
           "  --resume PATH      continue from a checkpoint file, or the newest one in a folder; the model,\n"
           "                     task and training options come from the checkpoint\n"
           "  --metrics FILE     one JSON line per step and per evaluation\n"
           "  --log-every N      progress line every N steps (default 1)\n"
           "  --device cpu|cuda  where the training steps run (default: cuda when a GPU is present and the settings\n"
           "                     run there, else cpu); cuda: BF16 products, fp32 master weights and moments on the\n"
           "                     GPU; evaluation and generation run on the CPU with the weights copied back.\n"
           "                     Checkpoints are the same on both devices (either resumes the\n"
           "                     other's); a GPU resume is not bit for bit (attention backward sums with atomics)\n");
    cli_gpu_mem_usage();
    halo_common_usage();
}

typedef struct { long digits, dim, layers, heads, hidden, eval_n; } demo_shape;

// The task and the precision, stored in checkpoints so that --resume continues the same run.
static char *app_json(const demo_shape *s, const model_halo_config *hc) {
    char *halo = hc ? model_halo_config_to_json(hc) : NULL;
    size_t n = 256 + (halo ? strlen(halo) : 0);
    char *buf = xmalloc(n);
    snprintf(buf, n, "{\"task\":\"addition\",\"digits\":%ld,\"eval_n\":%ld%s%s}", s->digits, s->eval_n,
             halo ? ",\"halo\":" : "", halo ? halo : "");
    free(halo);
    return buf;
}

static int app_parse(const char *json, demo_shape *s, const char *path, halo_common_opts *co) {
    cJSON *j = cJSON_Parse(json ? json : "");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "digits"), *e = cJSON_GetObjectItemCaseSensitive(j, "eval_n");
    int ok = cJSON_IsNumber(d) && cJSON_IsNumber(e), rc = HALO_OK;
    if (ok && (!json_whole(d, 1, ADD_MAX_DIGITS) || !json_whole(e, 0, 1e9))) {
        cJSON_Delete(j);
        return halo_fail("checkpoint %s: demo metadata ('app'): digits must be 1..%d and eval_n a count", path,
                         ADD_MAX_DIGITS);
    }
    if (ok) { s->digits = (long)d->valuedouble; s->eval_n = (long)e->valuedouble; }
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, "halo");
    if (ok && cJSON_IsObject(h)) {
        char *hj = cJSON_PrintUnformatted(h);
        rc = model_halo_config_from_json(hj, path, &co->hc);
        co->given = 1;
        free(hj);
    }
    cJSON_Delete(j);
    if (!ok) return halo_fail("checkpoint %s: no demo task in its metadata ('app')", path);
    return rc;
}

int cmd_demo(int argc, char **argv) {
    demo_shape sh = {.digits = 3, .dim = 128, .layers = 2, .heads = 4, .hidden = 344, .eval_n = 200};
    train_options o = train_options_default();
    o.steps = 800; o.batch_size = 128; o.lr = 1e-3; o.eval_every = 200; o.clip = 1.0f;
    o.adamw.weight_decay = 0.1;
    long threads = 0, show = 8, seed = 1, v;
    double x;
    const char *out_dir = NULL, *resume = NULL, *s;
    int use_cuda = -1;
    halo_common_opts co = halo_common_opts_default();
    train_cuda_mem gmem = {0};
    int gmem_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = halo_common_opts_parse(&co, argc, argv, &i);
        if (r == 0) r = cli_gpu_mem_parse(&gmem, &gmem_given, argc, argv, &i);
        if (r < 0) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 2; }
        if (r > 0) continue;
        if (cli_is_flag(a, "--help") || cli_is_flag(a, "-h")) { usage(); return 0; }
#define INTFLAG(name, dst) else if ((s = cli_flag_value(argc, argv, &i, name))) { \
            if (cli_parse_int(name, s, &v) || v < 0) { fprintf(stderr, "halo demo: %s\n", v < 0 ? name : halo_error()); return 2; } dst = v; }
        INTFLAG("--steps", o.steps) INTFLAG("--seed", seed) INTFLAG("--threads", threads) INTFLAG("--digits", sh.digits)
        INTFLAG("--dim", sh.dim) INTFLAG("--layers", sh.layers) INTFLAG("--heads", sh.heads) INTFLAG("--hidden", sh.hidden)
        INTFLAG("--batch", o.batch_size) INTFLAG("--eval-every", o.eval_every) INTFLAG("--eval-n", sh.eval_n)
        INTFLAG("--show", show) INTFLAG("--ckpt-every", o.ckpt_every) INTFLAG("--keep", o.keep_ckpts)
        INTFLAG("--log-every", o.log_every)
#undef INTFLAG
        else if ((s = cli_flag_value(argc, argv, &i, "--lr"))) {
            if (cli_parse_float("--lr", s, &x)) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 2; }
            o.lr = x;
        }
        else if ((s = cli_flag_value(argc, argv, &i, "--out"))) out_dir = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--ckpt-dir"))) o.ckpt_dir = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--resume"))) resume = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--metrics"))) o.metrics_path = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--device"))) {
            if (cli_device_parse(s, &use_cuda)) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 2; }
        }
        else { fprintf(stderr, "halo demo: unknown option '%s' (see --help)\n", a); return 2; }
    }
    if (use_cuda < 0) use_cuda = cli_device_auto(&co, NULL, "demo");
    if (use_cuda && cli_cuda_check()) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 1; }
    if (cli_gpu_mem_check(gmem_given, use_cuda)) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 2; }
    if (threads > 0) {   // default: all cores (OpenBLAS's OpenMP build shares OpenMP's pool)
        omp_set_num_threads((int)threads);
        openblas_set_num_threads((int)threads);
    }
    o.seed = (uint64_t)seed;
    o.min_lr = o.lr / 10;
    o.warmup = o.steps / 20;

    llama_model m;
    llama_config cfg;
    char ckpt[4096];
    if (resume) {
        // Everything that shapes the run comes from the checkpoint, so that the resumed run equals the original.
        struct stat st;
        if (stat(resume, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (checkpoint_find_latest(resume, ckpt, sizeof ckpt)) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 1; }
        } else snprintf(ckpt, sizeof ckpt, "%s", resume);
        checkpoint_meta meta;
        if (checkpoint_read_meta(ckpt, &cfg, &meta)) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 1; }
        int bad = app_parse(meta.app_json, &sh, ckpt, &co) ||
                  (meta.options_json ? train_options_from_json(meta.options_json, &o) : halo_fail("checkpoint %s has no training options", ckpt));
        checkpoint_meta_free(&meta);
        if (bad) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 1; }
        if (llama_init(&m, &cfg)) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 1; }
    } else {
        if (sh.digits < 1 || sh.digits > ADD_MAX_DIGITS) { fprintf(stderr, "halo demo: --digits must be 1..%d\n", ADD_MAX_DIGITS); return 2; }
        if (sh.heads < 1 || sh.dim % sh.heads) { fprintf(stderr, "halo demo: --heads must divide --dim\n"); return 2; }
        memset(&cfg, 0, sizeof cfg);
        cfg.vocab_size = ADD_VOCAB; cfg.dim = (int)sh.dim; cfg.hidden_dim = (int)sh.hidden; cfg.n_layers = (int)sh.layers;
        cfg.n_heads = cfg.n_kv_heads = (int)sh.heads; cfg.head_dim = (int)(sh.dim / sh.heads);
        cfg.max_pos = 64; cfg.norm_eps = 1e-5f; cfg.rope_theta = 10000; cfg.rope_scaling = ROPE_SCALING_NONE;
        cfg.tie_embeddings = 1; cfg.bos_id = ADD_BOS; cfg.eos_id = ADD_EOS;
        if (llama_config_validate(&cfg, "demo model") || llama_init(&m, &cfg)) { fprintf(stderr, "halo demo: %s\n", halo_error()); return 2; }
        llama_init_random(&m, (uint64_t)seed);
    }
    o.seq_len = add_seq_len((int)sh.digits) - 1;
    if (halo_common_apply(&co, &m)) { fprintf(stderr, "halo demo: %s\n", halo_error()); llama_free(&m); return 2; }

    add_task task;
    add_task_init(&task, (int)sh.digits, (int)sh.eval_n);
    trainer t;
    int rc = 1;
    if (trainer_init(&t, &m, &o, add_task_source(&task))) { fprintf(stderr, "halo demo: %s\n", halo_error()); goto done_model; }
    trainer_set_eval(&t, add_eval_callback, &task);
    task.show = (int)show;
    task.show_at_step = o.steps;
    char *app = app_json(&sh, llama_get_halo(&m));
    trainer_set_app_meta(&t, app);
    free(app);
    if (resume) {
        if (trainer_resume(&t, ckpt)) { fprintf(stderr, "halo demo: %s\n", halo_error()); goto done; }
        printf("resumed from %s at step %d\n", ckpt, t.step);
    }
    if (use_cuda) {
        if (trainer_use_cuda(&t, &gmem)) { fprintf(stderr, "halo demo: %s\n", halo_error()); goto done; }
        printf("demo: training on the GPU; evaluation and generation run on the CPU with the weights copied back\n");
    }
    char threads_desc[64];
    if (use_cuda) snprintf(threads_desc, sizeof threads_desc, "GPU (BF16), %d CPU threads", omp_get_max_threads());
    else snprintf(threads_desc, sizeof threads_desc, "%d threads", omp_get_max_threads());
    printf("demo: %d-digit addition | model dim %d, %d layers, %d heads, hidden %d, vocab %d (%.2fM params) | "
           "batch %d x %d tokens, %d steps, lr %.1e cosine, %s | %s\n",
           (int)sh.digits, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.hidden_dim, cfg.vocab_size, m.n_params / 1e6,
           o.batch_size, o.seq_len, o.steps, o.lr, threads_desc, halo_common_describe(&co));
    fflush(stdout);
    if (trainer_run(&t)) { fprintf(stderr, "halo demo: %s\n", halo_error()); goto done; }

    double acc = task.last_accuracy;
    printf("final accuracy: %.1f%% exact match on %d held-out sums after %d steps (%.1f s of training)\n",
           100 * acc, task.n_eval, t.step, t.last.elapsed_s);
    if (out_dir) {
        t.be.to_host(&t);   // the GPU's weights (the last evaluation copied them already; this is cheap)
        if (llama_save_hf(&m, out_dir, "float32", NULL) || halo_common_save(&co, &m, out_dir)) { fprintf(stderr, "halo demo: %s\n", halo_error()); goto done; }
        printf("model written to %s\n", out_dir);
    }
    rc = 0;
done:
    trainer_free(&t);
done_model:
    add_task_free(&task);
    llama_free(&m);
    return rc;
}
