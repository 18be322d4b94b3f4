// Crash safety end to end: runs `halo demo` (tiny config, a checkpoint every step) once uninterrupted, then again
// killed with SIGKILL at a seeded random step, resumes it from its newest checkpoint, and requires the resumed
// run's metrics file (every step's loss and the final evaluation) to equal the uninterrupted run's exactly.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include "test.h"
#include "train/checkpoint.h"
#include "util/error.h"

#define STEPS 16
static char g_halo[512], g_dir[256];

static pid_t spawn(const char *ckpt_dir, const char *metrics, const char *resume) {
    const char *args[64] = {g_halo, "demo", "--digits", "2", "--dim", "32", "--layers", "2", "--heads", "2",
                            "--hidden", "64", "--batch", "8", "--steps", "16", "--eval-every", "0", "--eval-n", "20",
                            "--show", "0", "--log-every", "0", "--threads", "1", "--ckpt-every", "1", "--lr", "1e-2",
                            "--ckpt-dir", ckpt_dir, "--metrics", metrics};
    int n = 34;
    if (resume) { args[n++] = "--resume"; args[n++] = resume; }
    args[n] = NULL;
    fflush(stdout);   // else the child's freopen writes the parent's buffered output a second time
    pid_t pid = fork();
    if (pid == 0) {
        FILE *devnull = freopen("/dev/null", "w", stdout);
        (void)devnull;
        execv(g_halo, (char *const *)args);
        _exit(127);
    }
    return pid;
}

static int wait_ok(pid_t pid) {
    int st;
    if (waitpid(pid, &st, 0) != pid) return 0;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

// Every line of the metrics file, for exact comparison of the loss and accuracy fields (elapsed time and speed
// differ between runs, so each line is cut to its "type", "step", "loss"/"accuracy" part).
static int read_metrics(const char *path, char lines[][128], int max) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[1024];
    int n = 0;
    while (n < max && fgets(buf, sizeof buf, f)) {
        char *cut = strstr(buf, ",\"lr\"");
        if (!cut) cut = strchr(buf, '}');
        if (cut) *cut = 0;
        snprintf(lines[n++], 128, "%.127s", buf);
    }
    fclose(f);
    return n;
}

static int count_train_lines(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[1024];
    int n = 0;
    while (fgets(buf, sizeof buf, f)) n += strstr(buf, "\"train\"") != NULL && strchr(buf, '\n') != NULL;
    fclose(f);
    return n;
}

int main(void) {
    const char *b = getenv("BUILD");
    snprintf(g_halo, sizeof g_halo, "%s/halo", b && *b ? b : "build");
    if (access(g_halo, X_OK)) { SKIP("%s not built", g_halo); TEST_END(); }
    snprintf(g_dir, sizeof g_dir, "/tmp/halo_test_kill_XXXXXX");
    if (!mkdtemp(g_dir)) { CHECK(0, "mkdtemp"); TEST_END(); }
    char ref_dir[512], ref_m[512], kill_dir[512], kill_m[512];
    snprintf(ref_dir, sizeof ref_dir, "%s/ref", g_dir);
    snprintf(ref_m, sizeof ref_m, "%s/ref.jsonl", g_dir);
    snprintf(kill_dir, sizeof kill_dir, "%s/killed", g_dir);
    snprintf(kill_m, sizeof kill_m, "%s/killed.jsonl", g_dir);

    CHECK(wait_ok(spawn(ref_dir, ref_m, NULL)), "uninterrupted demo run failed");
    static char ref[64][128], got[64][128];
    int nref = read_metrics(ref_m, ref, 64);
    CHECK(nref == STEPS + 1, "uninterrupted run wrote %d metric lines, want %d", nref, STEPS + 1);

    // Kill at a seeded random step between 3 and STEPS-4.
    unsigned long long seed = 2024;
    int kill_at = 3 + (int)(t_rng_next(&seed) % (STEPS - 6));
    pid_t pid = spawn(kill_dir, kill_m, NULL);
    struct timespec ts = {0, 200000};
    for (int i = 0; i < 600000 && count_train_lines(kill_m) < kill_at; i++) nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    int lines_at_kill = count_train_lines(kill_m);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the run was killed by SIGKILL (status %d)", st);
    char latest[600];
    CHECK(checkpoint_find_latest(kill_dir, latest, sizeof latest) == HALO_OK, "a checkpoint survives the kill: %s", halo_error());
    llama_config cfg;
    checkpoint_meta meta;
    CHECK(checkpoint_read_meta(latest, &cfg, &meta) == HALO_OK, "newest checkpoint is whole: %s", halo_error());
    printf("killed at step ~%d (target %d); newest checkpoint: step %lld\n", lines_at_kill, kill_at, (long long)meta.step);
    CHECK(meta.step < STEPS, "the kill came before the end (checkpoint at step %lld)", (long long)meta.step);
    checkpoint_meta_free(&meta);

    CHECK(wait_ok(spawn(kill_dir, kill_m, kill_dir)), "resumed demo run failed");
    int ngot = read_metrics(kill_m, got, 64);
    CHECK(ngot == nref, "resumed metrics file has %d lines, uninterrupted %d", ngot, nref);
    int same = ngot == nref;
    for (int i = 0; same && i < nref; i++)
        if (strcmp(ref[i], got[i])) { same = 0; fprintf(stderr, "line %d differs:\n  %s\n  %s\n", i, ref[i], got[i]); }
    CHECK(same, "killed-and-resumed run equals the uninterrupted one, loss for loss");
    if (same) printf("resumed run matches: last line %s\n", got[nref - 2]);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd)) {}
    TEST_END();
}
