// `halo tokenize`: encode text (or a file) to token ids printed as a JSON array, or decode comma-separated ids to
// text, with a Hugging Face tokenizer.json (or a SentencePiece tokenizer.model).
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

static void usage(FILE *o) {
    fprintf(o,
            "usage: halo tokenize --tokenizer FILE_OR_DIR (--text TEXT | --file PATH | --decode IDS) [options]\n"
            "  --tokenizer P    tokenizer.json, or a directory holding tokenizer.json (or only tokenizer.model)\n"
            "  --text TEXT      encode TEXT; prints the ids as a JSON array\n"
            "  --file PATH      encode the whole file PATH\n"
            "  --special        apply the post-processor template when encoding (e.g. prepend BOS)\n"
            "  --decode IDS     decode comma-separated ids (e.g. 1,22557,1526) and print the text\n"
            "  --skip-special   with --decode: drop special tokens (HF skip_special_tokens=True)\n");
}

static int read_all(const char *path, char **out, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return halo_fail("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *p = xmalloc(cap);
    size_t k;
    while ((k = fread(p + len, 1, cap - len, f)) > 0) {
        len += k;
        if (len == cap) p = xrealloc(p, cap *= 2);
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(p); return halo_fail("%s: read error", path); }
    *out = p; *n = len;
    return HALO_OK;
}

int cmd_tokenize(int argc, char **argv) {
    const char *tokpath = NULL, *text = NULL, *file = NULL, *decode = NULL, *v;
    bool special = false, skip_special = false;
    for (int i = 1; i < argc; i++) {
        if (cli_is_flag(argv[i], "--help") || cli_is_flag(argv[i], "-h")) { usage(stdout); return 0; }
        else if ((v = cli_flag_value(argc, argv, &i, "--tokenizer"))) tokpath = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--text"))) text = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--file"))) file = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--decode"))) decode = v;
        else if (cli_is_flag(argv[i], "--special")) special = true;
        else if (cli_is_flag(argv[i], "--skip-special")) skip_special = true;
        else { fprintf(stderr, "halo tokenize: unknown option '%s'\n", argv[i]); usage(stderr); return 2; }
    }
    if (!tokpath || (!!text + !!file + !!decode) != 1) {
        fprintf(stderr, "halo tokenize: need --tokenizer and exactly one of --text, --file, --decode\n");
        usage(stderr);
        return 2;
    }
    halo_tokenizer *tok;
    if (tokenizer_load(tokpath, &tok)) { fprintf(stderr, "halo tokenize: %s\n", halo_error()); return 1; }
    int rc = 0;
    if (decode) {
        size_t n = 0, cap = 16;
        int32_t *ids = xmalloc(cap * sizeof *ids);
        const char *p = decode;
        while (*p) {
            while (*p == ',' || *p == ' ' || *p == '[' || *p == ']') p++;
            if (!*p) break;
            char *end; errno = 0;
            long x = strtol(p, &end, 10);
            if (end == p || errno || x < 0 || x > INT32_MAX) {
                fprintf(stderr, "halo tokenize: --decode: '%.20s' is not a token id\n", p);
                free(ids); tokenizer_free(tok);
                return 2;
            }
            if (n == cap) ids = xrealloc(ids, (cap *= 2) * sizeof *ids);
            ids[n++] = (int32_t)x;
            p = end;
        }
        char *s = tokenizer_decode(tok, ids, n, skip_special);
        printf("%s\n", s);
        free(s); free(ids);
    } else {
        char *buf = NULL; size_t len = 0;
        if (file) {
            if (read_all(file, &buf, &len)) { fprintf(stderr, "halo tokenize: %s\n", halo_error()); tokenizer_free(tok); return 1; }
        } else len = strlen(text);
        int32_t *ids; size_t n;
        if (tokenizer_encode(tok, buf ? buf : text, len, special, &ids, &n)) {
            fprintf(stderr, "halo tokenize: %s\n", halo_error());
            rc = 1;
        } else {
            putchar('[');
            for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
            printf("]\n");
            free(ids);
        }
        free(buf);
    }
    tokenizer_free(tok);
    return rc;
}
