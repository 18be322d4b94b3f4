// `halo finetune` end to end on real data: a HALO INT8 run checkpoints, a resume without precision flags picks
// the precision up from the checkpoint and reproduces the uninterrupted run's losses exactly; the exported model
// carries halo_config.json; a malformed data line stops the run with file:line; --halo-token-block outside level 2 or
// with an unsupported size is refused with a message.
#include <cjson/cJSON.h>
#include "test.h"
#include "util/fileio.h"

static char dir[256], bin[512];

// Runs a command; returns its exit status.
static int sh(const char *fmt, const char *extra) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, fmt, extra);
    return system(cmd);
}

// Losses by step from a metrics JSONL file (type "train"); returns how many were read.
static int read_losses(const char *path, double *loss, int max) {
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        cJSON *t = cJSON_GetObjectItem(o, "type"), *s = cJSON_GetObjectItem(o, "step"), *l = cJSON_GetObjectItem(o, "loss");
        if (cJSON_IsString(t) && !strcmp(t->valuestring, "train") && cJSON_IsNumber(s) && s->valueint <= max) {
            loss[s->valueint - 1] = l->valuedouble;
            if (s->valueint > n) n = s->valueint;
        }
        cJSON_Delete(o);
    }
    if (f) fclose(f);
    return n;
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
    snprintf(cmd, sizeof cmd, "%%s --ckpt-dir %s/ck2 --resume %s/ck/step_00000002.safetensors --metrics %s/resumed.jsonl "
             "> %s/resumed.log 2>&1", dir, dir, dir, dir);
    CHECK(sh(cmd, common) == 0, "resumed run");
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
    free(text);
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
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) {}
    TEST_END();
}
