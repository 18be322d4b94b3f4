// `halo finetune` end to end on real data: a HALO INT8 run checkpoints, a resume without precision flags picks
// the precision up from the checkpoint and reproduces the uninterrupted run's losses exactly; the exported model
// carries halo_config.json; a malformed data line stops the run with file:line; --halo-token-block outside level 2 or
// with an unsupported size is refused with a message; --eval-fp32 scores the same weights without quantization and
// leaves the run as it was.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "model/llama.h"
#include "test_cli.h"
#include "util/error.h"

static char dir[256], bin[512];

// --eval-fp32 (FP8 level 0): val_loss_fp32 equals `halo eval --precision fp32` of the exported weights, val_loss
// equals `halo eval` with the exported halo_config.json, the two differ, and the training losses are bit for bit those
// of the same run without the flag (the bypass leaves the HALO layers as they were).
static void test_eval_fp32(const char *common) {
    char cmd[8192], path[512];
    const char *fp8 = "--precision fp8 --seed 7 --eval-every 2";
    snprintf(cmd, sizeof cmd, "%%s %s --eval-fp32 --metrics %s/e32.jsonl --out %s/e32 > %s/e32.log 2>&1", fp8, dir, dir, dir);
    CHECK(sh(cmd, common) == 0, "fp8 run with --eval-fp32");
    snprintf(cmd, sizeof cmd, "%%s %s --metrics %s/e8.jsonl > %s/e8.log 2>&1", fp8, dir, dir);
    CHECK(sh(cmd, common) == 0, "fp8 run without --eval-fp32");
    double a[5] = {0}, b[5] = {0};
    snprintf(path, sizeof path, "%s/e32.jsonl", dir);
    int na = read_losses(path, a, 5);
    double v8 = last_eval(path, "val_loss"), v32 = last_eval(path, "val_loss_fp32");
    snprintf(path, sizeof path, "%s/e8.jsonl", dir);
    int nb = read_losses(path, b, 5);
    CHECK(na == 5 && nb == 5, "losses logged: %d and %d", na, nb);
    for (int s = 0; s < 5; s++) CHECK(a[s] == b[s] && a[s] > 0, "step %d loss %.9g with --eval-fp32, %.9g without", s + 1, a[s], b[s]);
    CHECK(isnan(last_eval(path, "val_loss_fp32")), "no val_loss_fp32 without the flag");
    CHECK(v8 > 0 && v32 > 0 && fabs(v8 - v32) > 1e-5 * v32, "FP8 and fp32 evaluations differ: %.9g vs %.9g", v8, v32);
    const char *ev = "%s eval --model %s/e32 --data %s --task loss --seq-len 48 --batch 2 --threads 1 --val-count 4 "
                     "--seed 7 %s > %s/%s.log 2>&1";
    snprintf(cmd, sizeof cmd, ev, bin, dir, test_shared_path("data/text/tinystories_sample.txt"), "--precision fp32", dir, "ev32");
    CHECK(system(cmd) == 0, "halo eval --precision fp32");
    snprintf(cmd, sizeof cmd, ev, bin, dir, test_shared_path("data/text/tinystories_sample.txt"), "", dir, "ev8");
    CHECK(system(cmd) == 0, "halo eval with the exported precision");
    snprintf(path, sizeof path, "%s/ev32.log", dir);
    double e32 = eval_loss(path);
    snprintf(path, sizeof path, "%s/ev8.log", dir);
    double e8 = eval_loss(path);
    CHECK(fabs(e32 - v32) <= 1e-5 * v32, "val_loss_fp32 %.9g == halo eval --precision fp32 %.9g", v32, e32);
    CHECK(fabs(e8 - v8) <= 1e-5 * v8, "val_loss %.9g == halo eval (fp8 from halo_config.json) %.9g", v8, e8);
}

// Flags a user can get wrong: each refused (exit 2 or 1) before any training, with a message naming the flag and
// the value. Before these checks --steps -5 trained a whole epoch, --warmup -4 ran at lr 0, --batch 99999999999
// wrapped to 1215752191, --lora-rank 100000 ran out of memory, and an --out that could not be written failed the run
// after training.
static void test_bad_flags(const char *common) {
    static const struct { const char *flags, *says; } bad[] = {
        {"--steps -5", "--steps: '-5' is not an integer from 1"},
        {"--steps 0", "--steps: '0' is not an integer from 1"},
        {"--warmup -4", "--warmup: '-4'"},
        {"--batch 99999999999", "--batch: '99999999999' is not an integer from 1 to 2147483647"},
        {"--grad-accum 0", "--grad-accum: '0'"},
        {"--eval-every -1", "--eval-every: '-1'"},
        {"--epochs -1", "--epochs: '-1' is not a positive number"},
        {"--epochs inf", "--epochs: 'inf' is not a positive number"},
        {"--seq-len 1", "--seq-len: '1' is not an integer from 2"},
        {"--threads x", "--threads: 'x' is not an integer"},
        {"--lora-rank 100000", "LoRA rank 100000 exceeds self_attn.q_proj's smaller dimension (in 64, out 64)"},
        {"--lora --lora-linears v --lora-rank 33", "LoRA rank 33 exceeds self_attn.v_proj's smaller dimension (in 64, out 32)"},
        {"--out /proc/halo_out", "--out: /proc/halo_out: cannot create directory"},
        {"--ckpt-dir /proc/halo_ck", "--ckpt-dir: /proc/halo_ck: cannot create directory"},
        {"--out FILE", "--out: FILE: cannot write there: Not a directory"},
        {"--out ''", "--out: the directory name is empty"},
        {"--ckpt-dir ''", "--ckpt-dir: the directory name is empty"},
        {"--early-stop 2", "--early-stop: needs --eval-every N"},
        {"--early-stop 0 --eval-every 1", "--early-stop: '0' is not an integer from 1"},
        {"--export-best", "--export-best: nothing to export without --out DIR"},
    };
    char cmd[8192], log[512];
    snprintf(log, sizeof log, "%s/flag.log", dir);
    char file[512], flags[1024], says[1024];   // FILE: a plain file where a folder should be
    snprintf(file, sizeof file, "%s/plain_file", dir);
    FILE *f = fopen(file, "w");
    if (f) fclose(f);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *at = strstr(bad[i].flags, "FILE");
        snprintf(flags, sizeof flags, "%.*s%s", at ? (int)(at - bad[i].flags) : (int)strlen(bad[i].flags),
                 bad[i].flags, at ? file : "");
        at = strstr(bad[i].says, "FILE");
        snprintf(says, sizeof says, "%.*s%s%s", at ? (int)(at - bad[i].says) : (int)strlen(bad[i].says), bad[i].says,
                 at ? file : "", at ? at + 4 : "");
        snprintf(cmd, sizeof cmd, "%%s %s > %s 2>&1", flags, log);
        int rc = sh(cmd, common);
        CHECK(rc != 0 && file_has(log, says), "`%s`: exit %d, message should hold \"%s\"", flags, rc, says);
        CHECK(!file_has(log, "step 1/"), "`%s` trained before refusing", flags);
    }
}

// Ctrl-C during training: the run stops after the step in flight, checkpoints that step, exports the weights to --out
// and exits 130. The checkpoint's step is the last step in the metrics file, and the export evaluates.
static void test_interrupt(void) {
    char cmd[8192], metrics[512], log[512];
    snprintf(metrics, sizeof metrics, "%s/int.jsonl", dir);
    snprintf(log, sizeof log, "%s/int.log", dir);
    snprintf(cmd, sizeof cmd, "exec %s finetune --model %s --data %s --seq-len 48 --batch 2 --steps 100000 --threads 1 "
             "--val-count 4 --eval-every 0 --ckpt-dir %s/int_ck --out %s/int_out --metrics %s > %s 2>&1", bin,
             test_shared_path("models/stories260K"), test_shared_path("data/text/tinystories_sample.txt"), dir, dir,
             metrics, log);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { execl("/bin/sh", "sh", "-c", cmd, (char *)NULL); _exit(127); }
    double loss[8];
    int n = 0;
    for (int tries = 0; tries < 600 && n < 3; tries++) {   // up to a minute for three logged steps
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
        n = read_losses(metrics, loss, 8);
    }
    kill(pid, SIGINT);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(n >= 3 && WIFEXITED(status) && WEXITSTATUS(status) == 130, "interrupted run: %d steps seen, exit status %d",
          n, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    int last = 0;
    FILE *f = fopen(metrics, "r");
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"type\":\"train\"") ? strstr(line, "\"step\":") : NULL;
        if (p) last = atoi(p + 7);
    }
    if (f) fclose(f);
    snprintf(cmd, sizeof cmd, "%s/int_ck/step_%08d.safetensors", dir, last);
    struct stat st;
    CHECK(last >= 3 && stat(cmd, &st) == 0, "checkpoint of the last step %d: %s", last, cmd);
    CHECK(file_has(log, "interrupted after step") && file_has(log, "--resume"), "the log says where to resume");
    snprintf(cmd, sizeof cmd, "%s eval --model %s/int_out --data %s --task loss --seq-len 48 --batch 2 --threads 1 "
             "--val-count 4 > %s/int_eval.log 2>&1", bin, dir, test_shared_path("data/text/tinystories_sample.txt"), dir);
    CHECK(system(cmd) == 0, "the interrupted run's export evaluates");
    snprintf(log, sizeof log, "%s/int_eval.log", dir);
    double v = eval_loss(log);
    CHECK(v > 0 && v < 10, "its loss %.4f", v);
}

// --dry-run shows training examples as the model sees them (decoded prompt, then exactly the answer tokens the loss
// covers) and trains nothing; a --seq-len that leaves no answer token is refused before training, naming the cut.
static void test_dry_run(void) {
    char data[512], cmd[8192], log[512];
    snprintf(data, sizeof data, "%s/dry.jsonl", dir);
    FILE *f = fopen(data, "w");
    fputs("{\"prompt\": \"Lily saw a cat.\", \"completion\": \"The cat was big.\"}\n"
          "{\"prompt\": \"Tom had a ball.\", \"completion\": \"It was red.\"}\n", f);
    fclose(f);
    snprintf(log, sizeof log, "%s/dry.log", dir);
    snprintf(cmd, sizeof cmd, "%s finetune --model %s --data %s --seq-len 64 --val-fraction 0 --dry-run --show-examples 1 "
             "--chat plain --out %s/dry_out --ckpt-dir %s/dry_ck > %s 2>&1", bin, test_shared_path("models/stories260K"),
             data, dir, dir, log);
    int rc = system(cmd);
    struct stat dst;
    snprintf(cmd, sizeof cmd, "%s/dry_out", dir);
    CHECK(stat(cmd, &dst) != 0, "a dry run creates no --out folder");
    snprintf(cmd, sizeof cmd, "%s/dry_ck", dir);
    CHECK(stat(cmd, &dst) != 0, "a dry run creates no --ckpt-dir folder");
    char *text = NULL;
    halo_read_file(log, &text, NULL);
    const char *p = text ? strstr(text, "[prompt]\n") : NULL, *l = text ? strstr(text, "[loss]\n") : NULL;
    CHECK(rc == 0 && p && l && strstr(p, "Lily saw a cat.") && strstr(p, "### Answer:") && l > p &&
          !strncmp(l + 7, "The cat was big.</s>", 20) && !strstr(text, "step 1/") && strstr(text, "nothing trained") &&
          !strstr(text, "Tom had"), "--dry-run output:\n%s", text ? text : "");
    free(text);
    snprintf(cmd, sizeof cmd, "%s finetune --model %s --data %s --seq-len 6 --val-fraction 0 --chat plain > %s 2>&1", bin,
             test_shared_path("models/stories260K"), data, log);
    CHECK(system(cmd) != 0 && file_has(log, "no training example has a token in the loss after the cut to --seq-len 6"),
          "a --seq-len that cuts every answer is refused before training");
    // --epochs whose step count does not fit an int: refused (the cast to int once made it a 1-step run)
    snprintf(cmd, sizeof cmd, "%s finetune --model %s --data %s --seq-len 64 --val-fraction 0 --chat plain --epochs 1e12 "
             "> %s 2>&1", bin, test_shared_path("models/stories260K"), data, log);
    rc = system(cmd);
    CHECK(rc != 0 && file_has(log, "--epochs 1e+12: 1000000000000 steps") && !file_has(log, "step 1/"),
          "--epochs 1e12 refused before training (exit %d)", rc);
}

// The "val_loss" of every "eval" line of a metrics file, in order; returns how many (at most max).
static int eval_losses(const char *path, int *steps, double *val, int max) {
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f) && n < max) {
        cJSON *o = cJSON_Parse(line), *t = cJSON_GetObjectItem(o, "type"), *s = cJSON_GetObjectItem(o, "step");
        cJSON *v = cJSON_GetObjectItem(o, "val_loss");
        if (cJSON_IsString(t) && !strcmp(t->valuestring, "eval") && cJSON_IsNumber(v)) {
            steps[n] = s->valueint;
            val[n++] = v->valuedouble;
        }
        cJSON_Delete(o);
    }
    if (f) fclose(f);
    return n;
}

// --early-stop and --export-best on a random-weight model at a learning rate that makes the validation loss jump
// about: the run stops where the full run's evaluations say it must, and the export scores the best evaluation's loss.
static void test_early_stop(void) {
    llama_config c = {.vocab_size = 512, .dim = 32, .hidden_dim = 40, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                      .head_dim = 8, .max_pos = 256, .norm_eps = 1e-5f, .rope_theta = 10000, .bos_id = 1, .eos_id = 2};
    llama_model m;
    char model[512], cmd[8192], path[512], common[4096];
    snprintf(model, sizeof model, "%s/random_llama", dir);
    CHECK(llama_init(&m, &c) == HALO_OK, "init");
    llama_init_random(&m, 31);
    CHECK(llama_save_hf(&m, model, "float32", test_shared_path("models/stories260K")) == HALO_OK, "save: %s",
          halo_error());
    llama_free(&m);
    snprintf(common, sizeof common, "%s finetune --model %s --data %s --seq-len 48 --batch 2 --steps 16 --lr 1e-1 "
             "--warmup 1 --threads 1 --val-count 4 --eval-every 1", bin, model,
             test_shared_path("data/text/tinystories_sample.txt"));
    snprintf(cmd, sizeof cmd, "%%s --metrics %s/es_full.jsonl > %s/es_full.log 2>&1", dir, dir);
    CHECK(sh(cmd, common) == 0, "the full run");
    int steps[64];
    double val[64];
    snprintf(path, sizeof path, "%s/es_full.jsonl", dir);
    const int n = eval_losses(path, steps, val, 64);
    // where --early-stop 2 must stop: the step of the second evaluation in a row above the best so far
    int best = 0, since = 0, stop = -1;
    for (int i = 1; i < n && stop < 0; i++) {
        if (val[i] < val[best]) { best = i; since = 0; }
        else if (++since >= 2) stop = steps[i];
    }
    printf("--early-stop 2 on evaluations of a run at lr 0.1: best val_loss %.6f at step %d, stop after step %d\n",
           val[best], steps[best], stop);
    CHECK(stop > 0 && stop < 16 && steps[best] >= 1, "the full run's evaluations hold an early stop after a best at a "
          "step of training (best at step %d, stop %d)", steps[best], stop);
    snprintf(cmd, sizeof cmd, "%%s --early-stop 2 --export-best --out %s/es_out --metrics %s/es.jsonl > %s/es.log 2>&1",
             dir, dir, dir);
    CHECK(sh(cmd, common) == 0, "the early-stopped run");
    snprintf(path, sizeof path, "%s/es.jsonl", dir);
    int trained = 0;
    double losses[16];
    trained = read_losses(path, losses, 16);
    int es_steps[64];
    double es_val[64];
    const int n_es = eval_losses(path, es_steps, es_val, 64);
    CHECK(n_es == stop + 1 && es_steps[n_es - 1] == stop, "one evaluation a step, the last at the stop (%d evaluations, "
          "last at step %d)", n_es, n_es ? es_steps[n_es - 1] : -1);
    snprintf(path, sizeof path, "%s/es.log", dir);
    CHECK(trained == stop && file_has(path, "early stop after step") && file_has(path, "exporting the weights of step"),
          "stopped after step %d (want %d), and the log says so and which step it exports", trained, stop);
    snprintf(cmd, sizeof cmd, "%s eval --model %s/es_out --data %s --task loss --seq-len 48 --batch 2 --threads 1 "
             "--val-count 4 > %s/es_eval.log 2>&1", bin, dir, test_shared_path("data/text/tinystories_sample.txt"), dir);
    CHECK(system(cmd) == 0, "eval of the export");
    snprintf(path, sizeof path, "%s/es_eval.log", dir);
    const double e = eval_loss(path);
    CHECK(fabs(e - val[best]) <= 1e-5 * val[best], "--export-best: the export scores %.9g, the best evaluation %.9g",
          e, val[best]);
}

int main(void) {
    if (!test_shared()) { SKIP("shared data folder not found (set HALO_SHARED)"); TEST_END(); }
    const char *b = getenv("BUILD");
    snprintf(bin, sizeof bin, "%s/halo", b && *b ? b : "build");
    snprintf(dir, sizeof dir, "/tmp/halo_test_finetune_%d", (int)getpid());
    char common[4096];
    snprintf(common, sizeof common, "%s finetune --model %s --data %s --seq-len 48 --batch 2 --steps 5 --lr 5e-4 "
             "--warmup 2 --threads 1 --val-count 4", bin, test_shared_path("models/stories260K"),
             test_shared_path("data/text/tinystories_sample.txt"));
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p %s && %%s --precision int8 --ckpt-dir %s/ck --ckpt-every 2 --metrics %s/full.jsonl "
             "--out %s/model > %s/full.log 2>&1", dir, dir, dir, dir, dir);
    CHECK(sh(cmd, common) == 0, "int8 finetune run");
    snprintf(cmd, sizeof cmd, "%%s --ckpt-dir %s/ck2 --ckpt-every 1 --keep-ckpts 2 --resume %s/ck/step_00000002.safetensors "
             "--metrics %s/resumed.jsonl > %s/resumed.log 2>&1", dir, dir, dir, dir);
    CHECK(sh(cmd, common) == 0, "resumed run");
    snprintf(cmd, sizeof cmd, "test \"$(ls %s/ck2 | tr '\\n' ' ')\" = 'step_00000004.safetensors step_00000005.safetensors '",
             dir);
    CHECK(system(cmd) == 0, "--ckpt-every 1 --keep-ckpts 2 over steps 3-5 leaves steps 4 and 5 only");
    double full[5] = {0}, res[5] = {0};
    int nf = read_losses(strcat(strcpy(cmd, dir), "/full.jsonl"), full, 5);
    int nr = read_losses(strcat(strcpy(cmd, dir), "/resumed.jsonl"), res, 5);
    CHECK(nf == 5 && nr == 5, "losses logged: %d full, %d resumed", nf, nr);
    for (int s = 2; s < 5; s++) CHECK(full[s] == res[s] && full[s] > 0, "step %d loss after resume %.9g == %.9g", s + 1, res[s], full[s]);
    char *text = NULL;
    snprintf(cmd, sizeof cmd, "%s/model/halo_config.json", dir);
    CHECK(halo_read_file(cmd, &text, NULL) == 0 && strstr(text, "\"int8\"") && strstr(text, "\"level\":2"),
          "exported halo_config.json records int8 level 2: %s", text ? text : "(missing)");
    free(text);
    snprintf(cmd, sizeof cmd, "%s/resumed.log", dir);
    CHECK(halo_read_file(cmd, &text, NULL) == 0 && strstr(text, "precision recorded"), "resume reported the recorded precision");
    CHECK(text && !strstr(text, "different training options"), "a resume with the same options warns of nothing");
    free(text);
    // a resume with other options names exactly the ones that differ
    snprintf(cmd, sizeof cmd, "%%s --ckpt-dir %s/ck3 --resume %s/ck/step_00000002.safetensors --lr 1e-3 --steps 6 "
             "> %s/resumed2.log 2>&1", dir, dir, dir);
    CHECK(sh(cmd, common) == 0, "resumed run with other options");
    snprintf(cmd, sizeof cmd, "%s/resumed2.log", dir);
    CHECK(file_has(cmd, "different training options (steps 5 -> 6, lr 0.0005 -> 0.001)"),
          "the warning lists steps and lr, nothing else");
    // a resume into a folder that holds a later step of the first run: a note says so (a copy of the folder)
    snprintf(cmd, sizeof cmd, "cp -r %s/ck %s/ck4 && %%s --ckpt-dir %s/ck4 --resume %s/ck4/step_00000002.safetensors "
             "--steps 5 > %s/resumed3.log 2>&1", dir, dir, dir, dir, dir);
    CHECK(sh(cmd, common) == 0, "resumed run into the first run's folder");
    snprintf(cmd, sizeof cmd, "%s/resumed3.log", dir);
    CHECK(file_has(cmd, "holds checkpoints past step 2 from an earlier run"), "the note on the folder's later steps");
    snprintf(cmd, sizeof cmd, "%s/resumed.log", dir);
    CHECK(!file_has(cmd, "from an earlier run"), "no such note for a fresh folder");
    // halo export of the INT8 run's checkpoint carries the precision too, and equals the run's own export
    snprintf(cmd, sizeof cmd, "%s export --checkpoint %s/ck --out %s/exported > %s/export.log 2>&1 && cmp %s/exported/model.safetensors "
             "%s/model/model.safetensors", bin, dir, dir, dir, dir, dir);
    CHECK(system(cmd) == 0, "halo export of the last checkpoint equals finetune --out");
    snprintf(cmd, sizeof cmd, "%s/exported/halo_config.json", dir);
    CHECK(file_has(cmd, "\"int8\"") && file_has(cmd, "\"level\":2"), "halo export writes the run's halo_config.json");
    // A malformed JSONL line stops the run naming file and line.
    snprintf(cmd, sizeof cmd, "%s/bad.jsonl", dir);
    FILE *f = fopen(cmd, "w");
    fputs("{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"c\", \"completion\": \"d\"}\n{\"prompt\": oops}\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s finetune --model %s --data %s/bad.jsonl --steps 1 --seq-len 32 > %s/bad.log 2>&1", bin,
             test_shared_path("models/stories260K"), dir, dir);
    CHECK(system(cmd) != 0, "malformed data refused");
    snprintf(cmd, sizeof cmd, "%s/bad.log", dir);
    CHECK(halo_read_file(cmd, &text, NULL) == 0 && strstr(text, "bad.jsonl:3"), "error names bad.jsonl:3: %s", text ? text : "");
    free(text);
    // --halo-token-block: level 2 only, and a block size with a Hadamard matrix; both refused before training
    snprintf(cmd, sizeof cmd, "%%s --precision fp8 --halo-token-block 64 > %s/tb.log 2>&1", dir);
    CHECK(sh(cmd, common) != 0, "token block at fp8 level 0 refused");
    snprintf(cmd, sizeof cmd, "%s/tb.log", dir);
    CHECK(halo_read_file(cmd, &text, NULL) == 0 && strstr(text, "--halo-token-block 64") && strstr(text, "level 0"),
          "token block error names the flag and the level: %s", text ? text : "");
    free(text);
    snprintf(cmd, sizeof cmd, "%%s --precision int8 --halo-token-block 14 > %s/tb.log 2>&1", dir);
    CHECK(sh(cmd, common) != 0, "token block 14 (no order-7 Hadamard) refused");
    snprintf(cmd, sizeof cmd, "%s/tb.log", dir);
    CHECK(halo_read_file(cmd, &text, NULL) == 0 && strstr(text, "token Hadamard block 14"),
          "token block 14 error: %s", text ? text : "");
    free(text);
    // --halo-delayed-scaling: described in the run's log, recorded in halo_config.json; refused without 8-bit products
    snprintf(cmd, sizeof cmd, "%%s --precision int8 --halo-level 0 --halo-delayed-scaling --steps 3 --out %s/dly "
             "> %s/dly.log 2>&1", dir, dir);
    CHECK(sh(cmd, common) == 0, "a delayed-scaling run");
    snprintf(cmd, sizeof cmd, "%s/dly.log", dir);
    CHECK(file_has(cmd, "int8 level 0") && file_has(cmd, "delayed scaling"), "the run's description names the option");
    snprintf(cmd, sizeof cmd, "%s/dly/halo_config.json", dir);
    CHECK(file_has(cmd, "\"delayed_scaling\":true"), "halo_config.json records delayed scaling");
    snprintf(cmd, sizeof cmd, "%%s --precision bf16 --halo-delayed-scaling > %s/dly2.log 2>&1", dir);
    CHECK(sh(cmd, common) != 0, "delayed scaling with bf16 products refused");
    snprintf(cmd, sizeof cmd, "%s/dly2.log", dir);
    CHECK(file_has(cmd, "int8 or fp8"), "the refusal says why");
    test_eval_fp32(common);
    test_bad_flags(common);
    test_interrupt();
    test_dry_run();
    test_early_stop();
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) {}
    TEST_END();
}
