// Dataset loading and batch-filling speed on the shared task files with the Llama 3 tokenizer.
// Usage: build/bench/bench_dataset [shared_dir]   (default ../shared)
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "data/dataset.h"
#include "util/error.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

int main(int argc, char **argv) {
    const char *sh = argc > 1 ? argv[1] : "../shared";
    char p[4096];
    snprintf(p, sizeof p, "%s/tokenizers/llama3", sh);
    halo_tokenizer *tok;
    if (tokenizer_load(p, &tok)) { fprintf(stderr, "%s\n", halo_error()); return 1; }
    static const struct { const char *preset, *file; } SETS[] = {
        {"viggo", "data/viggo/train.csv"}, {"gsm8k", "data/gsm8k/train.jsonl"}, {"sql", "data/sql/all.jsonl"}};
    for (int s = 0; s < 3; s++) {
        dataset_config c;
        dataset_config_default(&c);
        snprintf(p, sizeof p, "%s/%s", sh, SETS[s].file);
        c.path = p;
        c.preset = SETS[s].preset;
        c.seq_len = 512;
        for (int pack = 0; pack < 2; pack++) {
            c.pack = pack;
            dataset *ds;
            double t0 = now();
            if (dataset_load(&c, tok, &ds)) { fprintf(stderr, "%s\n", halo_error()); return 1; }
            double t1 = now();
            halo_batch b;
            halo_batch_alloc(&b, 32, 512);
            dataset_iter it = {1, 0, 0};
            int k, nb = 0;
            int64_t loss = 0;
            while (dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, &k) == 0 && k > 0) {
                nb++;
                for (int i = 0; i < 32 * 512; i++) loss += b.targets[i] >= 0;
            }
            double t2 = now();
            char sum[1024];
            dataset_summary(ds, sum, sizeof sum);
            printf("%-6s %-6s load %.2f s, %d batches of 32x512 in %.3f s, loss-token fill %.1f%%\n  %s\n",
                   SETS[s].preset, pack ? "packed" : "padded", t1 - t0, nb, t2 - t1,
                   100.0 * loss / ((double)nb * 32 * 512), sum);
            halo_batch_free(&b);
            dataset_free(ds);
        }
    }
    tokenizer_free(tok);
    return 0;
}
