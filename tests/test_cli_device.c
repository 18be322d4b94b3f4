// --device on the model-running verbs without a GPU (CUDA_VISIBLE_DEVICES is emptied, so this holds on the GPU
// machine too): a bad value is refused naming the flag; --device cuda fails before loading anything with an error
// that names the flag and says there is no CUDA device (or no CUDA backend in a build without nvcc); generation
// (generate, eval's task metrics) runs on the CPU with a one-line note; --help says where each part runs; the GPU
// memory flags (--bf16-moments, --bf16-grads, --recompute) are refused without --device cuda.
#include <sys/wait.h>
#include "test.h"
#include "util/fileio.h"

static char bin[512], dir[256];

// Runs `bin ARGS` with no visible GPU; returns the exit status and the combined output in *out (malloc'ed).
static int run(const char *args, char **out) {
    char cmd[20000], log[512];
    snprintf(log, sizeof log, "%s/out.log", dir);
    snprintf(cmd, sizeof cmd, "CUDA_VISIBLE_DEVICES= %s %s > %s 2>&1", bin, args, log);
    int rc = system(cmd);
    *out = NULL;
    if (halo_read_file(log, out, NULL) != 0) *out = strdup("");
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int no_gpu_error(const char *text) {
#ifdef HALO_CUDA
    return strstr(text, "--device cuda: no CUDA device found") != NULL;
#else
    return strstr(text, "--device cuda: this build has no CUDA backend") != NULL;
#endif
}

int main(void) {
    if (!test_shared()) { SKIP("shared data folder not found (set HALO_SHARED)"); TEST_END(); }
    const char *b = getenv("BUILD");
    snprintf(bin, sizeof bin, "%s/halo", b && *b ? b : "build");
    snprintf(dir, sizeof dir, "/tmp/halo_test_cli_device_%d", (int)getpid());
    char cmd[8192], *out;
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd)) {}
    const char *model = test_shared_path("models/stories260K");
    const char *text = test_shared_path("data/text/tinystories_sample.txt");
    const char *golden = test_shared_path("goldens/stories260K_train.safetensors");

    // bad values name the flag
    const char *verbs_bad[] = {"demo --steps 1 --device tpu", "generate --model x --prompt-ids 1 --device tpu"};
    for (int i = 0; i < 2; i++) {
        int rc = run(verbs_bad[i], &out);
        CHECK(rc != 0 && strstr(out, "--device: 'tpu' is not cpu or cuda"), "`%s`: exit %d, output: %s", verbs_bad[i], rc, out);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "debug-step --model %s --batch %s --out %s/d.st --device gpu", model, golden, dir);
    int rc = run(cmd, &out);
    CHECK(rc != 0 && strstr(out, "--device: 'gpu' is not cpu or cuda"), "debug-step --device gpu: exit %d: %s", rc, out);
    free(out);

    // --device cuda without a GPU: an error naming the flag, for every verb that computes on the GPU
    char cmds[4][4096];
    snprintf(cmds[0], sizeof cmds[0], "demo --steps 1 --device cuda");
    snprintf(cmds[1], sizeof cmds[1], "finetune --model %s --data %s --steps 1 --seq-len 32 --device cuda "
             "--ckpt-dir %s/ck", model, text, dir);
    snprintf(cmds[2], sizeof cmds[2], "eval --model %s --data %s --task loss --device cuda", model, text);
    snprintf(cmds[3], sizeof cmds[3], "debug-step --model %s --batch %s --out %s/d.st --device cuda", model, golden, dir);
    for (int i = 0; i < 4; i++) {
        rc = run(cmds[i], &out);
        CHECK(rc == 1 && no_gpu_error(out), "`halo %.60s...`: exit %d, output: %s", cmds[i], rc, out);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s/d.st", dir);
    CHECK(!halo_file_exists(cmd), "debug-step wrote nothing after the device error");

    // GPU memory flags: refused on the CPU naming them, bad --recompute values named, listed in --help
    snprintf(cmds[0], sizeof cmds[0], "demo --steps 1 --bf16-grads");
    snprintf(cmds[1], sizeof cmds[1], "finetune --model %s --data %s --steps 1 --seq-len 32 --recompute mlp "
             "--bf16-moments", model, text);
    for (int i = 0; i < 2; i++) {
        rc = run(cmds[i], &out);
        CHECK(rc != 0 && strstr(out, "GPU memory options: they need --device cuda"), "`halo %.60s...`: exit %d: %s",
              cmds[i], rc, out);
        free(out);
    }
    rc = run("demo --steps 1 --recompute some --device cuda", &out);
    CHECK(rc == 2 && strstr(out, "--recompute: 'some' is not none, norms, mlp or all"), "--recompute some: exit %d: %s",
          rc, out);
    free(out);
    for (int i = 0; i < 2; i++) {
        rc = run(i ? "finetune --help" : "demo --help", &out);
        CHECK(rc == 0 && strstr(out, "--bf16-grads") && strstr(out, "--recompute none|norms|mlp|all"),
              "`halo %s` lists the GPU memory flags", i ? "finetune --help" : "demo --help");
        free(out);
    }

    // generation on the GPU (the KV-cache decoder): without a GPU, generate and eval's generation tasks stop before
    // loading anything, like the training verbs
    snprintf(cmd, sizeof cmd, "generate --model %s --prompt-ids 1,2,3 --max-new-tokens 2 --device cuda", model);
    rc = run(cmd, &out);
    CHECK(rc == 1 && no_gpu_error(out) && !strstr(out, "generated_ids"), "generate --device cuda: exit %d: %s", rc, out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s/qa.jsonl", dir);
    FILE *f = fopen(cmd, "w");
    fputs("{\"prompt\": \"Once upon a time\", \"completion\": \" there\"}\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "eval --model %s --data %s/qa.jsonl --task exact --all --max-new-tokens 2 "
             "--predictions %s/p.jsonl --device cuda", model, dir, dir);
    rc = run(cmd, &out);
    CHECK(rc == 1 && no_gpu_error(out), "eval --task exact --device cuda: exit %d: %s", rc, out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s/p.jsonl", dir);
    CHECK(!halo_file_exists(cmd), "eval wrote no predictions after the device error");

    // the default device: HALO_DEVICE=cuda asks for the GPU (none visible here: the device error); unset, with no
    // GPU visible, the CPU runs
    for (int i = 0; i < 2; i++) {
        char log[600];
        snprintf(log, sizeof log, "%s/auto.log", dir);
        snprintf(cmd, sizeof cmd, "CUDA_VISIBLE_DEVICES= %s %s generate --model %s --prompt-ids 1,2,3 "
                 "--max-new-tokens 2 > %s 2>&1", i ? "env -u HALO_DEVICE" : "HALO_DEVICE=cuda", bin, model, log);
        int st = system(cmd);
        rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (halo_read_file(log, &out, NULL) != 0) out = strdup("");
        if (i) CHECK(rc == 0 && strstr(out, "\"generated_ids\""), "generate without --device, no GPU: exit %d: %s", rc, out);
        else CHECK(rc == 1 && no_gpu_error(out), "HALO_DEVICE=cuda generate: exit %d: %s", rc, out);
        free(out);
    }

    // help texts
    const char *helps[][2] = {{"demo --help", "--device cpu|cuda"}, {"finetune --help", "not bit for bit"},
                              {"eval --help", "--device cpu|cuda"},
                              {"generate --help", "the GPU KV-cache"},
                              {"debug-step --help", "--device cpu|cuda (default: cuda when a GPU is present"}};
    for (int i = 0; i < 5; i++) {
        rc = run(helps[i][0], &out);
        CHECK(rc == 0 && strstr(out, helps[i][1]), "`halo %s` mentions '%s'", helps[i][0], helps[i][1]);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) {}
    TEST_END();
}
