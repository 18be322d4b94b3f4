// Tokenizer throughput on one thread: encodes tinyshakespeare with the Llama 3 and Llama 2 tokenizer.json files,
// line by line (each line encoded separately, as the HF speed anchor did) and as one whole-file call.
// usage: bench_tokenizer [TEXT_FILE]   (default $HALO_SHARED/data/text/tinyshakespeare.txt, HALO_SHARED=../shared)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "bench.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"


int main(int argc, char **argv) {
    const char *shared = getenv("HALO_SHARED");
    if (!shared || !*shared) shared = "../shared";
    char text_path[4096];
    if (argc > 1) snprintf(text_path, sizeof text_path, "%s", argv[1]);
    else snprintf(text_path, sizeof text_path, "%s/data/text/tinyshakespeare.txt", shared);
    FILE *f = fopen(text_path, "rb");
    if (!f) { fprintf(stderr, "bench_tokenizer: cannot open %s (pass a text file or set HALO_SHARED)\n", text_path); return 1; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *text = malloc((size_t)n + 1);
    if (fread(text, 1, (size_t)n, f) != (size_t)n) { fprintf(stderr, "short read\n"); return 1; }
    fclose(f);
    text[n] = 0;

    static const char *names[] = {"llama3", "llama2"};
    static const char *rel[] = {"tokenizers/llama3/tokenizer.json", "tokenizers/llama2/tokenizer.json"};
    static const double hf[] = {1.6, 1.5};
    printf("text: %s (%.2f MB), one thread\n", text_path, n / 1e6);
    printf("MB/s: best of 3 passes; 'first' is the first line-by-line pass (cold word cache)\n");
    printf("%-8s %8s %11s %11s %9s %11s %9s %9s\n", "tok", "load s", "lines MB/s", "first MB/s", "tokens", "whole MB/s",
           "tokens", "HF lines");
    for (int k = 0; k < 2; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", shared, rel[k]);
        double t0 = now_s();
        halo_tokenizer *tok;
        if (tokenizer_load(path, &tok)) { fprintf(stderr, "bench_tokenizer: %s\n", halo_error()); return 1; }
        double load = now_s() - t0;

        // line by line: each line without its newline, like HF encoding text.splitlines()
        size_t tokens_lines = 0;
        double best_lines = 1e30, first_lines = 0;
        for (int rep = 0; rep < 3; rep++) {
            size_t cnt = 0;
            t0 = now_s();
            for (char *p = text, *end = text + n; p < end;) {
                char *nl = memchr(p, '\n', (size_t)(end - p));
                size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
                int32_t *ids; size_t m;
                if (tokenizer_encode(tok, p, len, false, &ids, &m)) { fprintf(stderr, "%s\n", halo_error()); return 1; }
                cnt += m;
                free(ids);
                p += len + 1;
            }
            double dt = now_s() - t0;
            if (dt < best_lines) best_lines = dt;
            if (rep == 0) first_lines = dt;   // includes filling the per-thread word cache
            tokens_lines = cnt;
        }
        size_t tokens_whole = 0;
        double best_whole = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            int32_t *ids; size_t m;
            t0 = now_s();
            if (tokenizer_encode(tok, text, (size_t)n, false, &ids, &m)) { fprintf(stderr, "%s\n", halo_error()); return 1; }
            double dt = now_s() - t0;
            if (dt < best_whole) best_whole = dt;
            tokens_whole = m;
            free(ids);
        }
        printf("%-8s %8.3f %11.1f %11.1f %9zu %11.1f %9zu %9.1f\n", names[k], load, n / 1e6 / best_lines,
               n / 1e6 / first_lines, tokens_lines, n / 1e6 / best_whole, tokens_whole, hf[k]);
        tokenizer_free(tok);
    }
    free(text);
    return 0;
}
