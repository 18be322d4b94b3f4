// `halo finetune` (alias `halo train`): fine-tunes a Hugging Face Llama directory on a dataset file with AdamW, a
// warmup + decay schedule, periodic validation loss, checkpoints, a metrics JSONL file, and a final export.
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "cli/common.h"
#include "data/dataset.h"
#include "dist/comm.h"
#include "model/llama.h"
#include "model/lora.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include <cjson/cJSON.h>
#include "util/error.h"
#include "util/fileio.h"

// Ctrl-C / SIGTERM: the step in flight finishes, then the run checkpoints and exports as at its end (no final
// evaluation) and exits 130; a second signal ends the process at once.
static volatile sig_atomic_t g_interrupted;
static void on_interrupt(int sig) {
    g_interrupted = sig;
    signal(sig, SIG_DFL);
}

// --ranks N: the run forks N ranks before anything is loaded (a forked process cannot use the parent's OpenMP
// threads); each rank parses the same command line again and runs it as one rank of g_rank_comm.
static halo_comm *g_rank_comm;
static int g_argc;
static char **g_argv;
int cmd_finetune(int argc, char **argv);
static int finetune_as_rank(halo_comm *c, void *arg) {
    g_rank_comm = c;
    int rc = cmd_finetune(g_argc, g_argv);
    if (rc != 130) return rc;
    // interrupted and saved: a success for the launcher, which then exits 130 (also for a signal sent to a rank alone)
    halo_comm_local_mark_signal(c, g_interrupted ? (int)g_interrupted : SIGINT);
    return 0;
}
// --threads' default on each of `ranks` ranks: the cores this process may run on, shared out (at least 1)
static long threads_per_rank(long ranks) {
    cpu_set_t set;
    const long cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    return cores / ranks > 0 ? cores / ranks : 1;
}

// --dry-run: the first k training examples in file order, decoded: the prompt, then the tokens the loss covers (with
// a conversation's earlier turns in the loss, each run of tokens in or out of it).
static void show_examples_of(const dataset *ds, const halo_tokenizer *tok, long k) {
    const int64_t total = dataset_size(ds, DATASET_TRAIN);
    for (int64_t i = 0; i < total && i < k; i++) {
        const int32_t *ids;
        const uint8_t *in_loss;
        int n, ls;
        const char *file;
        int64_t line;
        if (dataset_get_example(ds, DATASET_TRAIN, i, &ids, &n, &ls, &in_loss, &file, &line) != HALO_OK) return;
        int n_loss = n - ls;
        if (in_loss) { n_loss = 0; for (int j = 1; j < n; j++) n_loss += in_loss[j]; }
        if (in_loss) printf("--- training example %lld of %lld (%s:%lld): %d tokens, %d of them in the loss (every "
                            "assistant turn) ---\n", (long long)i + 1, (long long)total, file, (long long)line, n, n_loss);
        else printf("--- training example %lld of %lld (%s:%lld): %d tokens, the loss on the last %d ---\n",
                    (long long)i + 1, (long long)total, file, (long long)line, n, n_loss);
        for (int j = 0; j < n;) {   // runs of positions out of / in the loss (ids[0] is never a target)
            const int in = in_loss ? j > 0 && in_loss[j] : j >= ls;
            int e = j + 1;
            while (e < n && (in_loss ? in_loss[e] != 0 : e >= ls) == in) e++;
            char *text = tokenizer_decode(tok, ids + j, (size_t)(e - j), false);
            printf("%s\n%s\n", in ? "[loss]" : j == 0 ? "[prompt]" : "[not in the loss]", text);
            free(text);
            j = e;
        }
    }
    printf("--- dry run: nothing trained ---\n");
}

static void usage(void) {
    printf(
        "usage: halo finetune --model DIR --data FILE [options]\n"
        "data:\n"
        "  --data FILE            .txt, .jsonl or .json array (text | messages | ShareGPT conversations | prompt/answer) or .csv\n"
        "  --val FILE             validation file (default: a seeded split of --data, see --val-fraction)\n"
        "  --preset NAME          viggo | gsm8k | sql: field names, templates and metric of the HALO paper's tasks\n"
        "  --prompt-template S    CSV/JSONL prompt from {column} placeholders; --answer-template S likewise\n"
        "  --prompt-field F --answer-field F   JSONL prompt/answer field names\n"
        "  --chat auto|llama3|llama2|plain|template   chat format (template: the model's own chat_template, as\n"
        "                         transformers renders it; auto: the model's template when it has one (llama3\n"
        "                         where that template renders as the built-in Llama 3 format), else llama3 when the\n"
        "                         tokenizer has its tokens, else plain)\n"
        "  --plain-template S     the plain chat format's user turn around {prompt}\n"
        "  --system S             system message for prompt/answer examples\n"
        "  --seq-len T (512)  --pack  --loss-on-all  --skip-bad-lines  --val-fraction F (0.05)  --val-count N\n"
        "  --loss-last-turn       a conversation's last assistant turn alone in the loss (default: every\n"
        "                         assistant turn, where the chat format renders earlier turns as a prefix)\n"
        "training:\n"
        "  --steps N | --epochs E (1)   --batch B (8)   --grad-accum K (1)\n"
        "  --lr X (4e-5)  --min-lr X (0)  --warmup N (20)  --decay linear|cosine|constant (linear)\n"
        "  --weight-decay W (0)  --beta1 B (0.9)  --beta2 B (0.999)  --clip C (1.0; 0 = off)  --seed S (1234)\n"
        "  --time-budget SECONDS  stop (and evaluate, checkpoint, export) after this much training time\n"
        "LoRA (the base weights frozen, their products forward and input gradient only, in HALO when it is on; CPU or\n"
        "GPU: on the GPU the base keeps bf16 weights only, no fp32 master, gradients or moments):\n"
        "  --lora                 adapters with the HALO paper's settings: r 16, alpha 8, dropout 0.05, all linears\n"
        "  --lora-rank R  --lora-alpha A (8)  --lora-dropout P (0.05)  --lora-linears all|q,k,v,o,gate,up,down\n"
        "                         (any of these turns LoRA on); --out writes a PEFT adapter (adapter_config.json,\n"
        "                         adapter_model.safetensors) that transformers + peft load on the base model\n"
        "  --merge                with LoRA: --out writes the whole model with the adapters merged into the weights\n"
        "evaluation, checkpoints, output:\n"
        "  --eval-every N (0 = at the end)  --eval-batches K (all)\n"
        "  --early-stop N         stop when N evaluations in a row have not lowered the run's best val_loss\n"
        "                         (the evaluation before training counts; needs --eval-every)\n"
        "  --export-best          --out gets the weights of the evaluation with the lowest val_loss (the one\n"
        "                         before training included) instead of the last step's; checkpoints keep the\n"
        "                         last step (a resumed run compares its own evaluations only); holds a host\n"
        "                         copy of the trainable weights (4 bytes a parameter)\n"
        "  --dry-run              load the model and data, show --show-examples N (2) training examples as the\n"
        "                         model sees them (decoded prompt and the tokens the loss covers), and stop\n"
        "  --eval-fp32            with HALO: each evaluation also scores the same weights with every linear in\n"
        "                         fp32 (val_loss_fp32: what the exported model gives elsewhere; on the CPU model)\n"
        "  --ckpt-dir DIR  --ckpt-every N  --resume CKPT   --metrics FILE.jsonl\n"
        "  --keep-ckpts N         keep only the newest N checkpoints in --ckpt-dir (0 = all; a 1B model's\n"
        "                         checkpoint with its AdamW moments is ~14 GB)\n"
        "                         Ctrl-C (or SIGTERM): the step in flight finishes, then the run checkpoints\n"
        "                         (--ckpt-dir) and exports (--out) and exits 130; a second Ctrl-C stops at once\n"
        "  --out DIR              export the result as a Hugging Face directory  --export-dtype bf16|f32 (f32)\n"
        "  --threads N            CPU threads (default: all cores; with --ranks, per rank: cores / N)\n"
        "  --ranks N              data parallel over N processes on this machine (CPU, or with --device cuda one\n"
        "                         GPU each): each step takes N x --grad-accum micro-batches, as one process\n"
        "                         with N times the accumulation would\n"
        "  --gpu-comm auto|nccl|host  with --ranks N --device cuda: how the GPUs sum gradients (auto: NCCL when\n"
        "                         built with it and there are N GPUs, else host: through host memory, slower,\n"
        "                         ranks may share GPUs)\n"
        "  --shard-optimizer      with --ranks: each rank keeps AdamW moments for 1/N of every tensor (with\n"
        "                         --device cuda: for 1/N of the GPU's flat parameter buffer)\n"
        "  --gather-8bit          with --ranks: also each rank updates 1/N of every INT8/FP8 HALO weight's rows and\n"
        "                         the ranks exchange them as the 8-bit codes the products use (implies\n"
        "                         --shard-optimizer; CPU only)\n"
        "  --device cpu|cuda      where the steps run (default: cuda when a GPU is present and the settings run\n"
        "                         there, else cpu; with --ranks: cpu); cuda: BF16 products (or HALO int8/fp8\n"
        "                         with per-tensor scales), fp32 master weights and moments on the GPU; the\n"
        "                         validation loss too (the GPU forward). Checkpoints have one format: a GPU run\n"
        "                         resumes on the CPU and vice versa. A GPU resume continues from the same\n"
        "                         weights and moments but is not bit for bit (attention backward sums with\n"
        "                         atomics); a CPU resume is.\n");
    cli_gpu_mem_usage();
    halo_common_usage();
}

typedef struct {
    dataset *ds;
    dataset_iter it;
} data_ctx;

static int data_next(void *c, halo_batch *b) {
    data_ctx *d = c;
    return dataset_next_batch(d->ds, DATASET_TRAIN, &d->it, true, b, NULL);
}
static void data_get(void *c, train_data_state *st) {
    data_ctx *d = c;
    st->epoch = d->it.epoch; st->position = d->it.index; st->rng = d->it.seed;
}
static int data_set(void *c, const train_data_state *st) {
    data_ctx *d = c;
    d->it.epoch = st->epoch; d->it.index = st->position; d->it.seed = st->rng;
    return HALO_OK;
}

typedef struct {
    dataset *ds;
    int B, T;
    long max_batches;
    trainer *t;   // its backend's own forward when it has one (the GPU), else the host model's
    int fp32_too; // --eval-fp32: also the same weights with every linear in fp32 (val_loss_fp32)
} eval_ctx;

static float cpu_forward(void *m, const halo_batch *b) { return llama_forward(m, b, NULL); }

// Token-weighted mean next-token cross-entropy over one split, in file order.
int finetune_val_loss(llama_model *m, dataset *ds, dataset_split split, int B, int T, long max_batches,
                      double *loss_out, long *tokens_out) {
    return finetune_val_loss_with(cpu_forward, m, ds, split, B, T, max_batches, loss_out, tokens_out);
}

int finetune_val_loss_with(float (*fwd)(void *ctx, const halo_batch *b), void *ctx, dataset *ds, dataset_split split,
                           int B, int T, long max_batches, double *loss_out, long *tokens_out) {
    halo_batch b;
    halo_batch_alloc(&b, B, T);
    dataset_iter it = {0, 0, 0};
    double sum = 0;
    long tokens = 0;
    for (long k = 0; max_batches <= 0 || k < max_batches; k++) {
        int n_ex = 0;
        if (dataset_next_batch(ds, split, &it, false, &b, &n_ex) != HALO_OK) { halo_batch_free(&b); return HALO_ERR; }
        if (n_ex == 0) break;
        const long cnt = (long)halo_batch_loss_tokens(&b);
        if (!cnt) continue;
        sum += (double)fwd(ctx, &b) * cnt;
        tokens += cnt;
    }
    halo_batch_free(&b);
    *loss_out = tokens ? sum / tokens : NAN;
    if (tokens_out) *tokens_out = tokens;
    return HALO_OK;
}

static int eval_fn(void *c, llama_model *m, int step, train_metrics *out) {
    eval_ctx *e = c;
    if (dataset_size(e->ds, DATASET_VAL) == 0) return HALO_OK;
    double loss;
    long tokens;
    const int rc = e->t && trainer_has_device_loss(e->t)
                       ? finetune_val_loss_with(trainer_device_loss, e->t, e->ds, DATASET_VAL, e->B, e->T, e->max_batches,
                                                &loss, &tokens)
                       : finetune_val_loss(m, e->ds, DATASET_VAL, e->B, e->T, e->max_batches, &loss, &tokens);
    if (rc != HALO_OK) return HALO_ERR;
    train_metrics_add(out, "val_loss", loss);
    train_metrics_add(out, "val_ppl", exp(loss));
    train_metrics_add(out, "val_tokens", (double)tokens);
    if (e->fp32_too && llama_get_halo(m)) {   // the host model, its HALO layers bypassed
        llama_halo_bypass(m, 1);
        const int rc32 = finetune_val_loss(m, e->ds, DATASET_VAL, e->B, e->T, e->max_batches, &loss, &tokens);
        llama_halo_bypass(m, 0);
        if (rc32 != HALO_OK) return HALO_ERR;
        train_metrics_add(out, "val_loss_fp32", loss);
    }
    return HALO_OK;
}

int cmd_finetune(int argc, char **argv) {
    const char *model_dir = NULL, *out_dir = NULL, *resume = NULL, *export_dtype = "f32", *device = NULL, *v;
    dataset_config dc;
    dataset_config_default(&dc);
    dc.progress = true;
    train_options o = train_options_default();
    o.lr = 4e-5f; o.min_lr = 0; o.warmup = 20; o.decay = LR_LINEAR; o.batch_size = 8; o.clip = 1.0f;
    o.adamw.weight_decay = 0; o.adamw.beta2 = 0.999f; o.seed = 1234; o.log_every = 1;
    double epochs = 1, time_budget = 0, d;
    int eval_fp32 = 0, lora_on = 0, merge = 0, export_best = 0, lora_kinds_given = 0;
    long early_stop = 0;
    lora_config lc = lora_config_default();
    long steps = 0, n, eval_batches = 0, threads = 0, show_examples = 2;
    int dry_run = 0, shard = 0, gather8 = 0, gpu_comm = TRAIN_GPU_COMM_AUTO, gpu_comm_given = 0;
    long ranks = 1;
    halo_common_opts co = halo_common_opts_default();
    train_cuda_mem gmem = {0};
    int gmem_given = 0;
    for (int i = 1; i < argc; i++) {
        int r = halo_common_opts_parse(&co, argc, argv, &i);
        if (r == 0) r = cli_dataset_opts_parse(&dc, argc, argv, &i);
        if (r == 0) r = cli_gpu_mem_parse(&gmem, &gmem_given, argc, argv, &i);
        if (r < 0) goto bad;
        if (r > 0) continue;
        if (cli_is_flag(argv[i], "--help") || cli_is_flag(argv[i], "-h")) { usage(); return 0; }
        else if ((v = cli_flag_value(argc, argv, &i, "--model"))) model_dir = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--data"))) dc.path = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--val"))) dc.val_path = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--steps"))) { if (cli_parse_range("--steps", v, 1, 2147483647, &steps)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--epochs"))) { if (cli_parse_float("--epochs", v, &epochs)) goto bad; if (!(epochs > 0) || !isfinite(epochs)) { halo_fail("--epochs: '%s' is not a positive number", v); goto bad; } }
        else if ((v = cli_flag_value(argc, argv, &i, "--batch"))) { if (cli_parse_range("--batch", v, 1, 2147483647, &n)) goto bad; o.batch_size = (int)n; }
        else if ((v = cli_flag_value(argc, argv, &i, "--grad-accum"))) { if (cli_parse_range("--grad-accum", v, 1, 2147483647, &n)) goto bad; o.grad_accum = (int)n; }
        else if ((v = cli_flag_value(argc, argv, &i, "--lr"))) { if (cli_parse_float("--lr", v, &d)) goto bad; o.lr = (float)d; }
        else if ((v = cli_flag_value(argc, argv, &i, "--min-lr"))) { if (cli_parse_float("--min-lr", v, &d)) goto bad; o.min_lr = (float)d; }
        else if ((v = cli_flag_value(argc, argv, &i, "--warmup"))) { if (cli_parse_range("--warmup", v, 0, 2147483647, &n)) goto bad; o.warmup = (int)n; }
        else if ((v = cli_flag_value(argc, argv, &i, "--decay"))) { if (lr_decay_parse(v, &o.decay)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--weight-decay"))) { if (cli_parse_float("--weight-decay", v, &d)) goto bad; o.adamw.weight_decay = (float)d; }
        else if ((v = cli_flag_value(argc, argv, &i, "--beta1"))) { if (cli_parse_float("--beta1", v, &d)) goto bad; o.adamw.beta1 = (float)d; }
        else if ((v = cli_flag_value(argc, argv, &i, "--beta2"))) { if (cli_parse_float("--beta2", v, &d)) goto bad; o.adamw.beta2 = (float)d; }
        else if ((v = cli_flag_value(argc, argv, &i, "--clip"))) { if (cli_parse_float("--clip", v, &d)) goto bad; o.clip = (float)d; }
        else if ((v = cli_flag_value(argc, argv, &i, "--seed"))) { if (cli_parse_int("--seed", v, &n)) goto bad; o.seed = (uint64_t)n; dc.seed = (uint64_t)n; }
        else if ((v = cli_flag_value(argc, argv, &i, "--time-budget"))) { if (cli_parse_float("--time-budget", v, &time_budget)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--eval-every"))) { if (cli_parse_range("--eval-every", v, 0, 2147483647, &n)) goto bad; o.eval_every = (int)n; }
        else if ((v = cli_flag_value(argc, argv, &i, "--early-stop"))) { if (cli_parse_range("--early-stop", v, 1, 2147483647, &early_stop)) goto bad; }
        else if (cli_is_flag(argv[i], "--export-best")) export_best = 1;
        else if ((v = cli_flag_value(argc, argv, &i, "--eval-batches"))) { if (cli_parse_range("--eval-batches", v, 0, 2147483647, &eval_batches)) goto bad; }
        else if (cli_is_flag(argv[i], "--eval-fp32")) eval_fp32 = 1;
        else if (cli_is_flag(argv[i], "--dry-run")) dry_run = 1;
        else if ((v = cli_flag_value(argc, argv, &i, "--show-examples"))) { if (cli_parse_range("--show-examples", v, 0, 1000000, &show_examples)) goto bad; }
        else if (cli_is_flag(argv[i], "--lora")) lora_on = 1;
        else if ((v = cli_flag_value(argc, argv, &i, "--lora-rank"))) { if (cli_parse_range("--lora-rank", v, 1, 2147483647, &n)) goto bad; lc.rank = (int)n; lora_on = 1; }
        else if ((v = cli_flag_value(argc, argv, &i, "--lora-alpha"))) { if (cli_parse_float("--lora-alpha", v, &lc.alpha)) goto bad; lora_on = 1; }
        else if ((v = cli_flag_value(argc, argv, &i, "--lora-dropout"))) { if (cli_parse_float("--lora-dropout", v, &lc.dropout)) goto bad; lora_on = 1; }
        else if ((v = cli_flag_value(argc, argv, &i, "--lora-linears"))) { if (model_halo_parse_linears(v, &lc.kinds)) goto bad; lora_on = lora_kinds_given = 1; }
        else if (cli_is_flag(argv[i], "--merge")) merge = 1;
        else if ((v = cli_flag_value(argc, argv, &i, "--ckpt-dir"))) o.ckpt_dir = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--ckpt-every"))) { if (cli_parse_range("--ckpt-every", v, 0, 2147483647, &n)) goto bad; o.ckpt_every = (int)n; }
        else if ((v = cli_flag_value(argc, argv, &i, "--keep-ckpts"))) { if (cli_parse_range("--keep-ckpts", v, 0, 2147483647, &n)) goto bad; o.keep_ckpts = (int)n; }
        else if ((v = cli_flag_value(argc, argv, &i, "--resume"))) resume = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--metrics"))) o.metrics_path = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--out"))) out_dir = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--export-dtype"))) export_dtype = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--device"))) device = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--threads"))) { if (cli_parse_range("--threads", v, 0, 4096, &threads)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--ranks"))) { if (cli_parse_range("--ranks", v, 1, 256, &ranks)) goto bad; }
        else if (cli_is_flag(argv[i], "--shard-optimizer")) shard = 1;
        else if (cli_is_flag(argv[i], "--gather-8bit")) gather8 = shard = 1;
        else if ((v = cli_flag_value(argc, argv, &i, "--gpu-comm"))) {
            if ((gpu_comm = train_gpu_comm_parse(v)) < 0) { halo_fail("--gpu-comm: '%s' is not auto, nccl or host", v); goto bad; }
            gpu_comm_given = 1;
        }
        else { fprintf(stderr, "halo finetune: unknown option '%s' (see --help)\n", argv[i]); return 2; }
    }
    if (!model_dir || !dc.path) { usage(); return 2; }
    // the process that prints notes and writes results: rank 0 (not the launcher of --ranks, whose rank 0 prints them)
    const int lead = g_rank_comm ? g_rank_comm->rank == 0 : ranks < 2 || dry_run;
    if (shard && ranks < 2) { halo_fail("%s: only with --ranks N, N >= 2", gather8 ? "--gather-8bit" : "--shard-optimizer"); goto bad; }
    if (resume && !lora_on) {   // a LoRA run's checkpoint resumes as one: its adapters' settings
        llama_config ccfg;
        checkpoint_meta meta;
        if (checkpoint_read_meta(resume, &ccfg, &meta) != HALO_OK) goto bad;
        int rc_l = meta.lora_json ? lora_config_from_json(meta.lora_json, resume, &lc) : HALO_OK;
        if (meta.lora_json && rc_l == HALO_OK) {
            lora_on = 1;
            if (lead) fprintf(stderr, "halo finetune: resuming the LoRA adapters recorded in %s\n", resume);
        }
        checkpoint_meta_free(&meta);
        if (rc_l != HALO_OK) goto bad;
    }
    if (merge && !lora_on) { halo_fail("--merge: only with LoRA (--lora or --lora-rank R)"); goto bad; }
    if (early_stop && o.eval_every <= 0) { halo_fail("--early-stop: needs --eval-every N (the evaluations it compares)"); goto bad; }
    if (export_best && !out_dir) { halo_fail("--export-best: nothing to export without --out DIR"); goto bad; }
    if (merge && !out_dir) { halo_fail("--merge: nothing to merge into without --out DIR"); goto bad; }
    // where the results go, checked before any training (a run must not end with nowhere to write)
    // (by the launcher of --ranks, before the ranks start)
    if (!g_rank_comm && !dry_run && out_dir && halo_writable_dir(out_dir) != HALO_OK) { halo_fail_ctx("--out: "); goto bad; }
    if (!g_rank_comm && !dry_run && o.ckpt_dir && halo_writable_dir(o.ckpt_dir) != HALO_OK) { halo_fail_ctx("--ckpt-dir: "); goto bad; }
    int use_cuda = 0;
    // (--ranks: no CUDA before the fork, so the CPU unless --device cuda)
    if (device ? cli_device_parse(device, &use_cuda) != HALO_OK
               : ranks < 2 && (use_cuda = cli_device_auto(&co, model_dir, "finetune"), 0))
        goto bad;
    // --ranks N --device cuda: rank r on GPU r (mod the count with --gpu-comm host). The launcher forks the ranks below
    // and must not start CUDA itself (a forked child cannot use its parent's CUDA): its check counts the GPUs in a
    // probe process; each rank takes its GPU before any other CUDA call (trainer_use_cuda then makes the device
    // communicator on it).
    const int launcher = ranks > 1 && !g_rank_comm && !dry_run;
    if (ranks > 1 && use_cuda && gather8) {
        halo_fail("--ranks with --device cuda: --gather-8bit is built for the CPU only (the GPU's HALO layers quantize "
                  "their own whole weights); --shard-optimizer alone shards the AdamW moments over the GPUs");
        goto bad;
    }
    if (gpu_comm_given && (ranks < 2 || !use_cuda)) { halo_fail("--gpu-comm: only with --ranks N --device cuda"); goto bad; }
    int comm_kind = -1;
    if (use_cuda && launcher && (comm_kind = cli_cuda_ranks_check((int)ranks, gpu_comm)) < 0) goto bad;
    if (use_cuda && g_rank_comm && cli_cuda_rank_device(g_rank_comm->rank) != HALO_OK) goto bad;
    if (use_cuda && !launcher && cli_cuda_check() != HALO_OK) goto bad;
    if (cli_gpu_mem_check(gmem_given, use_cuda) != HALO_OK) goto bad;
    if (strcmp(export_dtype, "bf16") && strcmp(export_dtype, "f32")) { halo_fail("--export-dtype: '%s' is not bf16 or f32", export_dtype); goto bad; }
    if (launcher) {   // forks the ranks, which run this function again
        g_argc = argc; g_argv = argv;
        const long per_rank = threads ? threads : threads_per_rank(ranks);
        fprintf(stderr, "halo finetune: %ld ranks (processes on this machine%s), %ld thread%s each%s\n", ranks,
                !use_cuda ? "" : comm_kind == TRAIN_GPU_COMM_NCCL ? ", rank r on GPU r, NCCL"
                               : ", rank r on GPU r mod the GPU count, gradients summed through host memory "
                                 "(--gpu-comm host: every step's gradients cross PCIe twice, much slower than NCCL)",
                per_rank, per_rank == 1 ? "" : "s",
                gather8 ? ", optimizer moments sharded, HALO weights exchanged in 8 bits" : shard ? ", optimizer moments sharded" : "");
        int status[256] = {0};   // (--ranks is at most 256)
        if (halo_comm_run_local((int)ranks, finetune_as_rank, NULL, status) != HALO_OK) {
            // a Ctrl-C before the ranks could catch it (while loading) ends them by the signal: an interruption
            const int sig = halo_comm_local_signal();
            int by_signal = 0;
            for (long r = 0; r < ranks; r++) by_signal |= sig && status[r] == 128 + sig;
            if (by_signal) {
                fprintf(stderr, "halo finetune: interrupted before training started (%s)\n", halo_error());
                return 130;
            }
            goto bad;
        }
        return halo_comm_local_signal() ? 130 : 0;
    }
    if (g_rank_comm && !threads) threads = threads_per_rank(g_rank_comm->world);   // the machine's cores shared out
    halo_set_threads((int)threads);
    o.seq_len = dc.seq_len;
    dc.progress = lead;

    llama_model m;
    if (llama_load(&m, model_dir) != HALO_OK) goto bad;
    if (dc.seq_len > m.cfg.max_pos && lead)
        fprintf(stderr, "halo finetune: note: --seq-len %d exceeds the model's max_position_embeddings %d\n", dc.seq_len, m.cfg.max_pos);
    if (resume && !co.given) {   // the precision the checkpointed run used, unless flags say otherwise
        llama_config ccfg;
        checkpoint_meta meta;
        if (checkpoint_read_meta(resume, &ccfg, &meta) != HALO_OK) { llama_free(&m); goto bad; }
        cJSON *app = meta.app_json ? cJSON_Parse(meta.app_json) : NULL;
        int rc_h = HALO_OK;
        if (cJSON_IsObject(app) && cJSON_GetObjectItemCaseSensitive(app, "precision")) {
            rc_h = model_halo_config_from_json(meta.app_json, resume, &co.hc);
            co.given = 1;
            if (lead) fprintf(stderr, "halo finetune: resuming with the precision recorded in %s\n", resume);
        }
        cJSON_Delete(app);
        checkpoint_meta_free(&meta);
        if (rc_h != HALO_OK) { llama_free(&m); goto bad; }
    }
    if (halo_common_apply_dir(&co, &m, model_dir) != HALO_OK) { llama_free(&m); goto bad; }
    char lora_desc[160] = "";
    if (lora_on) {
        if (m.cfg.arch == ARCH_PHI3 && !lora_kinds_given) {   // q, k, v and gate, up are fused tensors there
            lc.kinds = (1u << LIN_O) | (1u << LIN_DOWN);
            if (lead) fprintf(stderr, "halo finetune: note: Phi-3's q, k, v and gate, up are fused tensors: LoRA on o "
                              "and down\n");
        }
        if (llama_lora_enable(&m, &lc, o.seed) != HALO_OK) { llama_free(&m); goto bad; }
        lora_describe(&lc, lora_desc, sizeof lora_desc);
        if (lead) fprintf(stderr, "halo finetune: %s: %zu trainable parameters (%.2f%% of %zu), base weights frozen\n", lora_desc,
                llama_trainable_params(&m).n, 100.0 * llama_trainable_params(&m).n / m.n_params, m.n_params);
    }
    halo_tokenizer *tok;
    if (tokenizer_load(model_dir, &tok) != HALO_OK) { llama_free(&m); goto bad; }
    dataset *ds = NULL;
    if (lead) fprintf(stderr, "halo finetune: loading %s\n", dc.path);
    if (dataset_load(&dc, tok, &ds) != HALO_OK || dataset_check_vocab(ds, m.cfg.vocab_size) != HALO_OK) {
        if (ds) dataset_free(ds);
        tokenizer_free(tok); llama_free(&m); goto bad;
    }
    char summary[512];
    dataset_summary(ds, summary, sizeof summary);
    if (lead) fprintf(stderr, "halo finetune: %s\n", summary);
    long per_epoch = (long)dataset_batches_per_epoch(ds, DATASET_TRAIN, dc.seed, 0, o.batch_size);
    const double want_steps = ceil(epochs * per_epoch / ((o.grad_accum > 0 ? o.grad_accum : 1) * (double)ranks));
    if (!steps && !(want_steps <= 2147483647.0)) {   // (int) of a larger double is undefined (it gave 1 step)
        halo_fail("--epochs %g: %.0f steps of %ld batches per epoch is more than 2147483647", epochs, want_steps, per_epoch);
        dataset_free(ds); tokenizer_free(tok); llama_free(&m); goto bad;
    }
    o.steps = steps > 0 ? (int)steps : (int)want_steps;
    if (o.steps < 1) o.steps = 1;
    if (lead)
        fprintf(stderr, "halo finetune: %d steps of %d x %d tokens (x%d accumulation%s), %ld batches per epoch, lr %g, %s\n",
                o.steps, o.batch_size, o.seq_len, o.grad_accum * (int)ranks, ranks > 1 ? " over the ranks" : "",
                per_epoch, o.lr, halo_common_describe(&co));

    if (per_epoch == 0 && !dry_run) {   // the iterator would fail at step 1 with less to say
        const dataset_stats *st = dataset_get_stats(ds);
        halo_fail("%s: no training example has a token in the loss after the cut to --seq-len %d (%lld of them cut, "
                  "the longest %lld tokens; %lld left without answer tokens): raise --seq-len or shorten the prompt; "
                  "--dry-run shows the examples as training would see them", dc.path, dc.seq_len,
                  (long long)st->n_truncated, (long long)st->max_tokens, (long long)st->n_no_loss);
        dataset_free(ds); tokenizer_free(tok); llama_free(&m); goto bad;
    }
    if (dry_run) {   // what training would see, then stop
        show_examples_of(ds, tok, show_examples);
        dataset_free(ds);
        tokenizer_free(tok);
        llama_free(&m);
        return 0;
    }

    data_ctx dctx = {ds, {dc.seed, 0, 0}};
    train_data_source src = {&dctx, data_next, data_get, data_set};
    trainer t;
    int rc = trainer_init(&t, &m, &o, src);
    if (rc == HALO_OK && llama_get_halo(&m)) {   // the precision goes into checkpoints so a resume can check it
        char *hj = model_halo_config_to_json(llama_get_halo(&m));
        trainer_set_app_meta(&t, hj);
        free(hj);
    }
    if (rc == HALO_OK && g_rank_comm) {
        train_dist_options dd = {.shard_optimizer = shard, .gather_8bit = gather8, .gpu_comm = gpu_comm};
        rc = trainer_set_comm(&t, g_rank_comm, &dd);
    }
    if (eval_fp32 && !llama_get_halo(&m) && lead)
        fprintf(stderr, "halo finetune: note: --eval-fp32 has nothing to add, every linear is fp32 already\n");
    eval_ctx ectx = {ds, o.batch_size, o.seq_len, eval_batches, &t, eval_fp32};
    if (rc == HALO_OK) {
        trainer_set_eval(&t, eval_fn, &ectx);
        if (resume) rc = trainer_resume(&t, resume);
        if (rc == HALO_OK && use_cuda) rc = trainer_use_cuda(&t, &gmem);   // uploads the resumed weights and moments
    }
    if (rc == HALO_OK && resume && o.ckpt_dir && lead) {   // another timeline's later checkpoints in the folder
        const int64_t latest_step = checkpoint_latest_step(o.ckpt_dir);
        if (latest_step > t.step) {
            char latest[4096];
            checkpoint_path(latest, sizeof latest, o.ckpt_dir, latest_step);
            fprintf(stderr, "halo finetune: note: %s holds checkpoints past step %d from an earlier run (up to %s); "
                    "this run overwrites them as it reaches their steps, and until then --resume %s picks the "
                    "earlier run's newest\n", o.ckpt_dir, t.step, latest, o.ckpt_dir);
        }
    }
    if (rc == HALO_OK && (early_stop || export_best) && dataset_size(ds, DATASET_VAL) == 0)
        rc = halo_fail("%s: no validation examples to compare (--val FILE, --val-fraction or --val-count)",
                       early_stop ? "--early-stop" : "--export-best");
    if (rc == HALO_OK && export_best) trainer_keep_best(&t);
    if (rc == HALO_OK) rc = trainer_open_metrics(&t);
    if (rc == HALO_OK && !resume && dataset_size(ds, DATASET_VAL) > 0) rc = trainer_evaluate(&t);   // the "before"
    g_interrupted = 0;
    struct sigaction sa = {.sa_handler = on_interrupt, .sa_flags = SA_RESTART}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    if (rc == HALO_OK) {
        double t_begin = halo_now();
        // ranks stop on the interrupt they agreed on after a step: a signal that reaches one rank after that agreement
        // must not end its loop alone (the others would wait for it in the next step)
        int stop = 0, early_stopped = 0;
        while (t.step < o.steps && rc == HALO_OK && !(g_rank_comm ? stop : g_interrupted)) {
            int measure = co.telemetry_every > 0 && (t.step + 1) % co.telemetry_every == 0 && llama_get_halo(&m);
            if (measure) trainer_halo_telemetry(&t, 1);
            train_step_info si;
            rc = trainer_step(&t, &si);   // a failed HALO product fails the step (trainer_step names it)
            if (rc != HALO_OK) break;
            trainer_log_step(&t, &si);
            trainer_log_metrics(&t, &si);
            if (measure) {
                trainer_halo_telemetry(&t, 0);
                if (lead) {
                    printf("quantization telemetry after step %d:\n", t.step);
                    trainer_halo_telemetry_report(&t, stdout);
                }
            }
            if (rc == HALO_OK && o.eval_every > 0 && t.step % o.eval_every == 0 && t.step < o.steps) rc = trainer_evaluate(&t);
            if (rc == HALO_OK && o.ckpt_dir && o.ckpt_every > 0 && t.step % o.ckpt_every == 0) rc = trainer_save(&t, NULL);
            int over = time_budget > 0 && halo_now() - t_begin > time_budget && t.step < o.steps;
            // (the lead rank evaluates, so only it counts the evaluations since the best)
            int early = early_stop > 0 && t.evals_since_best >= early_stop && t.step < o.steps;
            if (g_rank_comm) {   // the ranks stop together: at the first step after which any of them would
                double f[3] = {over, g_interrupted, early};
                if (g_rank_comm->allreduce(g_rank_comm, f, 3, HALO_F64, HALO_MAX)) { rc = HALO_ERR; break; }
                over = f[0] > 0;
                stop = (int)f[1];
                early = f[2] > 0;
            }
            if (over) {
                if (lead) fprintf(stderr, "halo finetune: time budget of %.0f s reached after %d of %d steps\n", time_budget, t.step, o.steps);
                break;
            }
            if (early) {
                early_stopped = 1;   // (this step was just evaluated)
                if (lead)
                    fprintf(stderr, "halo finetune: early stop after step %d of %d: %d evaluations without a val_loss "
                            "below %.6g (step %d)\n", t.step, o.steps, t.evals_since_best, t.best_val, t.best_step);
                break;
            }
        }
        const int stopped = g_rank_comm ? stop : g_interrupted;   // the same on every rank
        if (stopped && lead) {
            fprintf(stderr, "halo finetune: interrupted after step %d of %d: %s\n", t.step, o.steps,
                    o.ckpt_dir || out_dir ? "saving, then stopping (again to stop at once)"
                                          : "stopping (no --ckpt-dir or --out to save into)");
            fflush(stderr);
        }
        if (rc == HALO_OK && !stopped && !early_stopped) rc = trainer_evaluate(&t);
        if (rc == HALO_OK && o.ckpt_dir) rc = trainer_save(&t, NULL);
        if (rc == HALO_OK && o.ckpt_dir && stopped && lead) {
            char ck[4096];
            checkpoint_path(ck, sizeof ck, o.ckpt_dir, t.step);
            fprintf(stderr, "halo finetune: checkpoint %s (continue with --resume %s)\n", ck, ck);
        }
        if (rc == HALO_OK && out_dir) rc = trainer_sync_weights(&t);   // every rank: the fp32 rows gathered in 8 bits
        if (rc == HALO_OK && out_dir && lead) {
            t.be.to_host(&t);
            const int best = export_best ? trainer_restore_best(&t) : -1;   // after the last checkpoint
            if (best >= 0)
                fprintf(stderr, "halo finetune: exporting the weights of step %d (val_loss %.6g, the lowest of this "
                        "run's evaluations)\n", best, t.best_val);
            const int bf16 = !strcmp(export_dtype, "bf16");
            if (lora_on && !merge) {
                char *base = realpath(model_dir, NULL);   // where transformers + peft find the base model
                rc = llama_lora_save(&m, out_dir, base ? base : model_dir, bf16);
                free(base);
            } else {
                if (merge && llama_get_halo(&m))
                    fprintf(stderr, "halo finetune: note: --merge with HALO: the merged weights' quantized forward is "
                            "not the trained one's (HALO(W) + adapter); the adapter itself reproduces it\n");
                llama_lora_merge(&m);   // nothing without adapters
                rc = llama_save_hf(&m, out_dir, bf16 ? "bfloat16" : "float32", model_dir);
            }
            if (rc == HALO_OK) rc = halo_common_save(&co, &m, out_dir);
            if (rc == HALO_OK) fprintf(stderr, "halo finetune: exported %s%s\n", lora_on && !merge ? "the LoRA adapter to " : "", out_dir);
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    const int interrupted = g_interrupted;
    // a failed rank ends the run for all now: its trainer_free must not wait for peers (the GPU backend's teardown
    // agrees over the ranks, and aborts NCCL instead when the run was aborted)
    if (rc != HALO_OK && g_rank_comm) halo_comm_abort(g_rank_comm);
    trainer_free(&t);
    dataset_free(ds);
    tokenizer_free(tok);
    llama_free(&m);
    if (rc != HALO_OK) goto bad;
    return interrupted ? 130 : 0;
bad:
    if (g_rank_comm) fprintf(stderr, "halo finetune (rank %d of %d): %s\n", g_rank_comm->rank, g_rank_comm->world, halo_error());
    else fprintf(stderr, "halo finetune: %s\n", halo_error());
    return 1;
}
