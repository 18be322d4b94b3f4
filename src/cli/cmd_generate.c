// `halo generate`: continues a prompt with a model directory, greedily or by sampling (temperature, top-k, top-p,
// seed), using the KV cache. Prints the ids as JSON; with a tokenizer (the model folder's tokenizer.json, or
// --tokenizer) it also accepts --prompt TEXT and prints the decoded text.
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#include <string.h>
#include "cli/cli.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/generate.h"
#include "util/error.h"
#include "util/fileio.h"

// Tokenizer hook: the tokenizer module is built on its own branch. Weak references let this verb link (and run
// on ids alone) in a tree without it; once src/tokenizer is merged these resolve to it and text works.
#pragma weak tokenizer_load
#pragma weak tokenizer_free
#pragma weak tokenizer_encode
#pragma weak tokenizer_decode

static void usage(void) {
    printf("usage: halo generate --model DIR (--prompt-ids 1,2,3 | --prompt TEXT) [options]\n"
           "  --max-new-tokens N   tokens to generate (default 64)\n"
           "  --temperature T      0 = greedy (default); > 0 samples\n"
           "  --top-k K            sample among the K most likely tokens (default 0: all)\n"
           "  --top-p P            sample from the smallest set with probability >= P (default 1)\n"
           "  --seed S             sampling seed (default 0)\n"
           "  --ignore-eos         keep going after the end-of-sequence token\n"
           "  --tokenizer PATH     tokenizer.json or folder (default: the model folder's, when present)\n"
           "  --threads N          OpenMP threads\n"
           "Prints {\"prompt_ids\": [...], \"generated_ids\": [...], \"ids\": [...]} (and \"text\" with a tokenizer).\n");
}

static int parse_ids(const char *s, int32_t **out, int *n) {
    int cap = 16;
    *out = xmalloc(cap * sizeof(int32_t));
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) { free(*out); return halo_fail("--prompt-ids: '%s' is not a comma-separated list of ids", s); }
        if (*n == cap) { cap *= 2; *out = xrealloc(*out, cap * sizeof(int32_t)); }
        (*out)[(*n)++] = (int32_t)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) { free(*out); return halo_fail("--prompt-ids: unexpected '%c' in '%s'", *p, s); }
    }
    if (*n == 0) { free(*out); return halo_fail("--prompt-ids: empty"); }
    return HALO_OK;
}

static void print_ids(const char *key, const int32_t *ids, int n) {
    printf("\"%s\": [", key);
    for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
    printf("]");
}

static void print_json_string(const char *s) {
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if (*c == '\n') printf("\\n");
        else if (*c < 0x20) printf("\\u%04x", *c);
        else putchar(*c);
    }
    putchar('"');
}

int cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *ids_s = NULL, *text = NULL, *tok_path = NULL, *s;
    gen_options o = gen_options_default();
    long v;
    double x;
    int use_eos = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_flag(a, "--help") || cli_is_flag(a, "-h")) { usage(); return 0; }
        else if (cli_is_flag(a, "--ignore-eos")) o.ignore_eos = 1, use_eos = 0;
        else if ((s = cli_flag_value(argc, argv, &i, "--model"))) model_dir = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--prompt-ids"))) ids_s = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--prompt"))) text = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--tokenizer"))) tok_path = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--max-new-tokens"))) { if (cli_parse_int(a, s, &v) || v < 0) goto bad_num; o.max_new_tokens = (int)v; }
        else if ((s = cli_flag_value(argc, argv, &i, "--top-k"))) { if (cli_parse_int(a, s, &v) || v < 0) goto bad_num; o.top_k = (int)v; }
        else if ((s = cli_flag_value(argc, argv, &i, "--seed"))) { if (cli_parse_int(a, s, &v)) goto bad_num; o.seed = (uint64_t)v; }
        else if ((s = cli_flag_value(argc, argv, &i, "--threads"))) { if (cli_parse_int(a, s, &v) || v < 1) goto bad_num; omp_set_num_threads((int)v); }
        else if ((s = cli_flag_value(argc, argv, &i, "--temperature"))) { if (cli_parse_float(a, s, &x) || x < 0) goto bad_num; o.temperature = (float)x; }
        else if ((s = cli_flag_value(argc, argv, &i, "--top-p"))) { if (cli_parse_float(a, s, &x) || x <= 0 || x > 1) goto bad_num; o.top_p = (float)x; }
        else { fprintf(stderr, "halo generate: unknown option '%s' (see --help)\n", a); return 2; }
        continue;
    bad_num:
        fprintf(stderr, "halo generate: bad value for %s: '%s'\n", a, s);
        return 2;
    }
    if (!model_dir || (!ids_s == !text)) { usage(); return 2; }

    // The tokenizer: explicit, or the model folder's tokenizer.json when the tokenizer module is linked in.
    halo_tokenizer *tok = NULL;
    char *auto_tok = halo_path_join(model_dir, "tokenizer.json");
    if (!tok_path && halo_file_exists(auto_tok)) tok_path = auto_tok;
    if (tok_path) {
        if (!tokenizer_load) {
            if (text || tok_path != auto_tok) { fprintf(stderr, "halo generate: this build has no tokenizer; use --prompt-ids\n"); free(auto_tok); return 2; }
        } else if (tokenizer_load(tok_path, &tok)) { fprintf(stderr, "halo generate: %s\n", halo_error()); free(auto_tok); return 1; }
    }
    free(auto_tok);
    int32_t *prompt = NULL;
    int n_prompt = 0;
    if (ids_s && parse_ids(ids_s, &prompt, &n_prompt)) { fprintf(stderr, "halo generate: %s\n", halo_error()); return 2; }
    if (text) {
        if (!tok) { fprintf(stderr, "halo generate: --prompt needs a tokenizer (--tokenizer PATH or DIR/tokenizer.json)\n"); return 2; }
        size_t n;
        if (tokenizer_encode(tok, text, strlen(text), true, &prompt, &n)) { fprintf(stderr, "halo generate: %s\n", halo_error()); return 1; }
        n_prompt = (int)n;
    }
    llama_model m;
    if (llama_load(&m, model_dir)) { fprintf(stderr, "halo generate: %s\n", halo_error()); free(prompt); return 1; }
    o.eos_id = use_eos ? m.cfg.eos_id : -1;
    int32_t *out = xmalloc((size_t)(o.max_new_tokens + 1) * sizeof(int32_t));
    int n_out = 0, rc = 0;
    if (gen_generate(&m, prompt, n_prompt, &o, out, &n_out)) { fprintf(stderr, "halo generate: %s\n", halo_error()); rc = 1; }
    else {
        int32_t *all = xmalloc((size_t)(n_prompt + n_out) * sizeof(int32_t));
        memcpy(all, prompt, (size_t)n_prompt * sizeof(int32_t));
        memcpy(all + n_prompt, out, (size_t)n_out * sizeof(int32_t));
        printf("{");
        print_ids("prompt_ids", prompt, n_prompt);
        printf(", ");
        print_ids("generated_ids", out, n_out);
        printf(", ");
        print_ids("ids", all, n_prompt + n_out);
        if (tok) {
            char *dec = tokenizer_decode(tok, out, (size_t)n_out, true), *full = tokenizer_decode(tok, all, (size_t)(n_prompt + n_out), true);
            printf(", \"generated_text\": ");
            print_json_string(dec ? dec : "");
            printf(", \"text\": ");
            print_json_string(full ? full : "");
            free(dec); free(full);
        }
        printf("}\n");
        free(all);
    }
    if (tok) tokenizer_free(tok);
    free(out); free(prompt);
    llama_free(&m);
    return rc;
}
