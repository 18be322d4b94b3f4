// `halo generate`: continues a prompt with a model directory, greedily or by sampling (temperature, top-k, top-p,
// seed), using the KV cache. Prints the ids as JSON; with a tokenizer (the model folder's tokenizer.json, or
// --tokenizer) it also accepts --prompt TEXT and prints the decoded text.
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#include <string.h>
#include <unistd.h>
#include "cli/cli.h"
#include "cli/common.h"
#include "data/data_internal.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/generate.h"
#include "util/error.h"
#include "util/fileio.h"

static void usage(void) {
    printf("usage: halo generate --model DIR (--prompt-ids 1,2,3 | --prompt TEXT) [options]\n"
           "  --adapter DIR        a LoRA adapter (PEFT layout, e.g. from finetune --lora) on top of --model (CPU)\n"
           "  --max-new-tokens N   tokens to generate (default 64)\n"
           "  --temperature T      0 = greedy (default); > 0 samples\n"
           "  --top-k K            sample among the K most likely tokens (default 0: all)\n"
           "  --top-p P            sample from the smallest set with probability >= P (default 1)\n"
           "  --seed S             sampling seed (default 0)\n"
           "  --ignore-eos         keep going after the end-of-sequence token\n"
           "  --tokenizer PATH     tokenizer.json or folder (default: the model folder's, when present)\n"
           "  --threads N          OpenMP threads\n"
           "  --chat               render --prompt as a user turn in the model family's chat format (Llama 3 when\n"
           "                       the tokenizer has its header tokens and the model's chat_template renders the same,\n"
           "                       else that chat_template, else Llama 2 [INST]); --system S adds a system turn\n"
           "  --json               with --prompt: print the JSON line instead of streaming text\n"
           "  --interactive        a conversation: each line of standard input is a user turn (in the --chat\n"
           "                       format), each answer streamed back and kept in the history; /reset clears it,\n"
           "                       end of input ends\n"
           "  --device cpu|cuda    where to decode (default: cuda when a GPU is present); cuda: the GPU KV-cache\n"
           "                       decoder with BF16 weights\n"
           "                       (same options, same output; greedy gives the CPU's tokens up to BF16 near-ties)\n"
           "With --prompt TEXT the generated text is streamed as it is produced. With --prompt-ids (or --json) prints\n"
           "{\"prompt_ids\": [...], \"generated_ids\": [...], \"ids\": [...]} (and \"text\" with a tokenizer).\n");
    halo_common_usage();
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

// Streams decoded text: re-decodes the generated ids and prints what was not printed yet, so that tokens that
// only form a character together (byte fallback, byte-level pieces) appear once complete.
typedef struct { const halo_tokenizer *tok; int32_t *ids; int n; size_t printed; } stream_ctx;
static void stream_token(void *c, int32_t id) {
    stream_ctx *st = c;
    st->ids[st->n++] = id;
    char *text = tokenizer_decode(st->tok, st->ids, (size_t)st->n, true);
    size_t len = text ? strlen(text) : 0;
    if (len > st->printed && !(len >= 3 && !strcmp(text + len - 3, "\xEF\xBF\xBD"))) {   // hold back a partial char
        fwrite(text + st->printed, 1, len - st->printed, stdout);
        fflush(stdout);
        st->printed = len;
    }
    free(text);
}

// The conversation turns[0..n) (user, assistant, ..., user) with an optional system message, rendered as the
// model family's chat format up to the assistant's generation prompt (Llama 3 when the tokenizer has its header
// tokens and the model's chat_template renders the same, else that chat_template, else Llama 2 [INST]). *l3: the
// Llama 3 format was used. *out malloc'ed.
static int render_chat(const halo_tokenizer *tok, const char *system, const data_msg *turns, int n, int *l3,
                       char **out) {
    *l3 = tokenizer_token_id(tok, "<|start_header_id|>") >= 0 && tokenizer_token_id(tok, "<|eot_id|>") >= 0;
    int32_t bos = tokenizer_bos_id(tok), eos = tokenizer_eos_id(tok);
    const char *bos_text = bos >= 0 && tokenizer_piece(tok, bos) ? tokenizer_piece(tok, bos) : "";
    const char *eos_text = eos >= 0 && tokenizer_piece(tok, eos) ? tokenizer_piece(tok, eos) : "";
    data_msg *msgs = xcalloc((size_t)n + 2, sizeof *msgs);
    int nm = 0;
    if (system) msgs[nm++] = (data_msg){"system", system, NULL};
    for (int i = 0; i < n; i++) msgs[nm++] = turns[i];
    msgs[nm++] = (data_msg){"assistant", "", NULL};   // the answer to come (the renderers' last message)
    data_str out_s = {0};
    // the model's template, unless it renders as the built-in Llama 3 format (the rule of --chat auto)
    const char *ct = tokenizer_chat_template(tok);
    if (*l3 && ct && data_chat_template_is_llama3(ct, bos_text, eos_text) != 0) ct = NULL;
    jinja_template *jt = NULL;
    int rc = ct ? (jinja_parse(ct, "the tokenizer's chat_template", &jt) ||
                   data_chat_render_template(jt, bos_text, eos_text, msgs, nm - 1, true, NULL, &out_s))
                : data_chat_render_prompt(*l3 ? DATASET_CHAT_LLAMA3 : DATASET_CHAT_LLAMA2, NULL, bos_text, eos_text,
                                          msgs, nm, &out_s);
    jinja_free(jt);
    free(msgs);
    if (rc) { data_str_free(&out_s); return HALO_ERR; }
    *out = out_s.p;
    return HALO_OK;
}

// --interactive: user turns from stdin, answers streamed to stdout and kept in the history (the whole conversation
// is encoded again each turn; a turn that no longer fits max_pos ends the loop with a message).
static int chat_loop(llama_model *m, const halo_tokenizer *tok, const char *system, gen_options o, int use_cuda) {
    data_msg *turns = NULL;
    int n = 0, cap = 0, rc = HALO_OK;
    char *line = NULL;
    size_t lcap = 0;
    const int32_t eot = tokenizer_token_id(tok, "<|eot_id|>");
    for (;;) {
        if (isatty(0)) { fprintf(stderr, "> "); fflush(stderr); }
        ssize_t len = getline(&line, &lcap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!strcmp(line, "/reset")) {
            for (int i = 0; i < n; i++) free((char *)turns[i].content);
            n = 0;
            fprintf(stderr, "(history cleared)\n");
            continue;
        }
        if (n + 2 > cap) { cap = cap ? 2 * cap : 16; turns = xrealloc(turns, sizeof *turns * (size_t)cap); }
        turns[n++] = (data_msg){"user", xstrdup(line), NULL};
        char *rendered = NULL;
        int l3 = 0;
        int32_t *prompt = NULL;
        size_t np = 0;
        if ((rc = render_chat(tok, system, turns, n, &l3, &rendered)) ||
            (rc = tokenizer_encode(tok, rendered, strlen(rendered), false, &prompt, &np))) { free(rendered); break; }
        free(rendered);
        gen_options to = o;
        if (l3 && eot >= 0 && !to.ignore_eos) to.eos_id = eot;
        if ((int64_t)np + to.max_new_tokens > m->cfg.max_pos) {
            rc = halo_fail("the conversation (%zu tokens) and --max-new-tokens %d exceed the model's %d positions: "
                           "/reset to start over", np, to.max_new_tokens, m->cfg.max_pos);
            free(prompt);
            break;
        }
        stream_ctx st = {tok, xmalloc(sizeof(int32_t) * (size_t)(to.max_new_tokens + 1)), 0, 0};
        to.on_token = stream_token;
        to.on_token_ctx = &st;
        int32_t *out = xmalloc((size_t)(to.max_new_tokens + 1) * sizeof(int32_t));
        int n_out = 0, np_i = (int)np;
        if (use_cuda) {
            cli_gpu_gen *gpu;
            rc = cli_gpu_gen_open(&gpu, m, 1, np_i + to.max_new_tokens, "generate");
            const int32_t *pp = prompt;
            if (rc == HALO_OK) rc = cli_gpu_gen_run(gpu, 1, &pp, &np_i, &to, &out, &n_out);
            cli_gpu_gen_close(gpu);
        } else rc = gen_generate(m, prompt, np_i, &to, out, &n_out);
        printf("\n");
        fflush(stdout);
        // the answer as history: its text without the end-of-turn token (the renderer writes that)
        while (n_out > 0 && gen_is_end(&to, out[n_out - 1])) n_out--;
        char *answer = rc == HALO_OK ? tokenizer_decode(tok, out, (size_t)n_out, true) : NULL;
        turns[n++] = (data_msg){"assistant", answer ? answer : xstrdup(""), NULL};
        free(out); free(prompt); free(st.ids);
        if (rc) break;
    }
    for (int i = 0; i < n; i++) free((char *)turns[i].content);
    free(turns);
    free(line);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *adapter = NULL, *ids_s = NULL, *text = NULL, *tok_path = NULL, *s;
    gen_options o = gen_options_default();
    long v;
    double x;
    int use_eos = 1, chat = 0, json = 0, use_cuda = -1, interactive = 0;
    const char *system = NULL;
    halo_common_opts co = halo_common_opts_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = halo_common_opts_parse(&co, argc, argv, &i);
        if (r < 0) { fprintf(stderr, "halo generate: %s\n", halo_error()); return 2; }
        if (r > 0) continue;
        if (cli_is_flag(a, "--help") || cli_is_flag(a, "-h")) { usage(); return 0; }
        else if (cli_is_flag(a, "--ignore-eos")) o.ignore_eos = 1, use_eos = 0;
        else if ((s = cli_flag_value(argc, argv, &i, "--model"))) model_dir = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--adapter"))) adapter = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--prompt-ids"))) ids_s = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--prompt"))) text = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--tokenizer"))) tok_path = s;
        else if (cli_is_flag(a, "--chat")) chat = 1;
        else if (cli_is_flag(a, "--json")) json = 1;
        else if (cli_is_flag(a, "--interactive")) interactive = chat = 1;
        else if ((s = cli_flag_value(argc, argv, &i, "--system"))) system = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--device"))) {
            if (cli_device_parse(s, &use_cuda)) { fprintf(stderr, "halo generate: %s\n", halo_error()); return 2; }
        }
        else if ((s = cli_flag_value(argc, argv, &i, "--max-new-tokens"))) { if (cli_parse_range(a, s, 0, 2147483647, &v)) goto bad_num; o.max_new_tokens = (int)v; }
        else if ((s = cli_flag_value(argc, argv, &i, "--top-k"))) { if (cli_parse_range(a, s, 0, 2147483647, &v)) goto bad_num; o.top_k = (int)v; }
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
    if (interactive && (ids_s || text || json)) {
        fprintf(stderr, "halo generate: --interactive reads the user turns from standard input: drop --prompt, "
                "--prompt-ids and --json\n");
        return 2;
    }
    if (!model_dir || (!interactive && !ids_s == !text)) { usage(); return 2; }
    if (cli_adapter_device(adapter, 0, &use_cuda) != HALO_OK) { fprintf(stderr, "halo generate: %s\n", halo_error()); return 2; }
    if (use_cuda < 0) use_cuda = cli_device_auto(NULL, model_dir, "generate");   // generation runs BF16 weights either way
    if (use_cuda && cli_cuda_check() != HALO_OK) { fprintf(stderr, "halo generate: %s\n", halo_error()); return 1; }

    // The tokenizer: explicit, or the model folder's tokenizer.json when there is one (the demo's byte-level
    // models have none: ids only).
    halo_tokenizer *tok = NULL;
    char *auto_tok = halo_path_join(model_dir, "tokenizer.json");
    if (!tok_path && halo_file_exists(auto_tok)) tok_path = auto_tok;
    if (tok_path && tokenizer_load(tok_path, &tok)) { fprintf(stderr, "halo generate: %s\n", halo_error()); free(auto_tok); return 1; }
    free(auto_tok);
    int32_t *prompt = NULL;
    int n_prompt = 0;
    if (ids_s && parse_ids(ids_s, &prompt, &n_prompt)) { fprintf(stderr, "halo generate: %s\n", halo_error()); return 2; }
    if (text) {
        if (!tok) { fprintf(stderr, "halo generate: --prompt needs a tokenizer (--tokenizer PATH or DIR/tokenizer.json)\n"); return 2; }
        size_t n;
        char *rendered = NULL;
        if (chat) {   // the model family's chat format
            int l3 = 0;
            const data_msg turn = {"user", text, NULL};
            if (render_chat(tok, system, &turn, 1, &l3, &rendered)) { fprintf(stderr, "halo generate: %s\n", halo_error()); return 1; }
            if (l3 && use_eos && o.eos_id < 0) o.eos_id = tokenizer_token_id(tok, "<|eot_id|>");
        }
        // A rendered chat prompt already holds its BOS text; a plain prompt gets the post-processor's template.
        int rc_enc = tokenizer_encode(tok, rendered ? rendered : text, strlen(rendered ? rendered : text), !rendered, &prompt, &n);
        free(rendered);
        if (rc_enc) { fprintf(stderr, "halo generate: %s\n", halo_error()); return 1; }
        n_prompt = (int)n;
    }
    llama_model m;
    if (cli_load_model(&m, model_dir, adapter, &co)) { fprintf(stderr, "halo generate: %s\n", halo_error()); free(prompt); return 1; }
    if (o.eos_id < 0) o.eos_id = use_eos ? m.cfg.eos_id : -1;
    if (use_eos && gen_read_stops(model_dir, &o)) { fprintf(stderr, "halo generate: %s\n", halo_error()); free(prompt); llama_free(&m); return 1; }
    if (interactive) {
        int rc_i = tok ? chat_loop(&m, tok, system, o, use_cuda)
                       : halo_fail("--interactive needs a tokenizer (--tokenizer PATH or DIR/tokenizer.json)");
        if (rc_i) fprintf(stderr, "halo generate: %s\n", halo_error());
        if (tok) tokenizer_free(tok);
        llama_free(&m);
        return rc_i ? 1 : 0;
    }
    stream_ctx st = {tok, NULL, 0, 0};
    int streaming = text && tok && !json;   // text in, text out as it is generated; ids in (or --json): one JSON line
    if (streaming) {
        st.ids = xmalloc(sizeof(int32_t) * (size_t)(o.max_new_tokens + 1));
        o.on_token = stream_token;
        o.on_token_ctx = &st;
    }
    int32_t *out = xmalloc((size_t)(o.max_new_tokens + 1) * sizeof(int32_t));
    int n_out = 0, rc = 0;
    int grc;
    if (use_cuda) {
        cli_gpu_gen *gpu;
        grc = cli_gpu_gen_open(&gpu, &m, 1, n_prompt + o.max_new_tokens, "generate");
        const int32_t *pp = prompt;
        if (grc == HALO_OK) grc = cli_gpu_gen_run(gpu, 1, &pp, &n_prompt, &o, &out, &n_out);
        cli_gpu_gen_close(gpu);
    } else
        grc = gen_generate(&m, prompt, n_prompt, &o, out, &n_out);
    if (grc) { fprintf(stderr, "halo generate: %s\n", halo_error()); rc = 1; }
    else if (streaming) {
        printf("\n");
    } else {
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
    free(out); free(prompt); free(st.ids);
    llama_free(&m);
    return rc;
}
