// Generation and export through the CLI-facing code: gen_generate's greedy path against the transformers greedy
// golden for stories260K, seeded sampling repeats, and `halo export` of a checkpoint (F32 exact, BF16 rounded)
// reloading as the same model.
#include <cjson/cJSON.h>
#include <sys/wait.h>
#include "model/llama.h"
#include "test.h"
#include "train/checkpoint.h"
#include "tokenizer/tokenizer.h"
#include "train/generate.h"
#include "util/error.h"
#include "util/fileio.h"
#include "util/numeric.h"

static void test_greedy_golden(void) {
    const char *dir = test_shared_path("models/stories260K"), *gold = test_shared_path("goldens/stories260K_greedy.json");
    char *text;
    llama_model m;
    if (halo_read_file(gold, &text, NULL) || llama_load(&m, dir)) { CHECK(0, "%s", halo_error()); return; }
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *p = cJSON_GetObjectItem(root, "prompt_ids"), *g = cJSON_GetObjectItem(root, "greedy_ids");
    int np = cJSON_GetArraySize(p), ng = cJSON_GetArraySize(g);
    int32_t prompt[64], out[128];
    for (int i = 0; i < np; i++) prompt[i] = cJSON_GetArrayItem(p, i)->valueint;
    gen_options o = gen_options_default();
    o.max_new_tokens = ng - np;
    o.eos_id = m.cfg.eos_id;
    int n;
    CHECK(gen_generate(&m, prompt, np, &o, out, &n) == HALO_OK, "%s", halo_error());
    int same = n == ng - np;
    for (int i = 0; same && i < n; i++) same &= out[i] == cJSON_GetArrayItem(g, np + i)->valueint;
    CHECK(same, "greedy generation equals transformers' %d tokens (got %d)", ng - np, n);
    // Sampling: same seed, same text; another seed, (almost surely) another text; top_k 1 is greedy.
    int32_t a[40], b[40], c[40];
    int na, nb, nc;
    o.max_new_tokens = 40; o.temperature = 1.0f; o.top_p = 0.9f; o.seed = 11; o.ignore_eos = 1;
    gen_generate(&m, prompt, np, &o, a, &na);
    gen_generate(&m, prompt, np, &o, b, &nb);
    o.seed = 12;
    gen_generate(&m, prompt, np, &o, c, &nc);
    CHECK(na == 40 && nb == 40 && !memcmp(a, b, sizeof a), "same seed repeats the sample");
    CHECK(memcmp(a, c, sizeof a) != 0, "another seed gives another sample");
    o.top_k = 1;
    gen_generate(&m, prompt, np, &o, a, &na);
    same = 1;
    for (int i = 0; i < 40 && i < ng - np; i++) same &= a[i] == cJSON_GetArrayItem(g, np + i)->valueint;
    CHECK(same, "top_k 1 sampling equals greedy");
    o.max_new_tokens = m.cfg.max_pos;
    CHECK(gen_generate(&m, prompt, np, &o, a, &na) == HALO_ERR && strstr(halo_error(), "max_position"), "too long refused: %s", halo_error());
    cJSON_Delete(root);
    llama_free(&m);
}

static int run(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_export(void) {
    const char *b = getenv("BUILD");
    char halo[512];
    snprintf(halo, sizeof halo, "%s/halo", b && *b ? b : "build");
    if (access(halo, X_OK)) { SKIP("%s not built", halo); return; }
    char dir[] = "/tmp/halo_test_export_XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    llama_config c = {.vocab_size = 40, .dim = 16, .hidden_dim = 32, .n_layers = 2, .n_heads = 2, .n_kv_heads = 1,
                      .head_dim = 8, .max_pos = 32, .norm_eps = 1e-5f, .rope_theta = 10000, .tie_embeddings = 1,
                      .bos_id = 1, .eos_id = 2};
    llama_model m, f32, bf;
    llama_init(&m, &c);
    llama_init_random(&m, 9);
    adamw_config ac = adamw_config_default();
    adamw_state opt;
    adamw_init(&opt, &ac, m.n_params, m.table, m.n_table);
    checkpoint_meta meta = {.step = 5};
    char ckpt[600], cmd[8192], out1[600], out2[600];
    checkpoint_path(ckpt, sizeof ckpt, dir, 5);
    snprintf(out1, sizeof out1, "%s/hf32", dir);
    snprintf(out2, sizeof out2, "%s/hfbf16", dir);
    CHECK(checkpoint_save(ckpt, &m, &opt, &meta) == HALO_OK, "%s", halo_error());
    snprintf(cmd, sizeof cmd, "%s export --checkpoint %s --out %s > /dev/null && %s export --checkpoint %s --out %s --dtype bf16 > /dev/null",
             halo, dir, out1, halo, ckpt, out2);
    CHECK(run(cmd) == 0, "halo export ran");
    CHECK(llama_load(&f32, out1) == HALO_OK, "reload f32 export: %s", halo_error());
    CHECK(f32.n_params == m.n_params && !memcmp(f32.params, m.params, m.n_params * sizeof(float)), "f32 export is exact");
    CHECK(llama_load(&bf, out2) == HALO_OK, "reload bf16 export: %s", halo_error());
    int ok = bf.n_params == m.n_params;
    for (size_t i = 0; ok && i < m.n_params; i++) ok &= bf.params[i] == bf16_round(m.params[i]);
    CHECK(ok, "bf16 export holds the round-to-nearest-even values");
    // Generate through the CLI from the exported folder: greedy twice gives the same JSON.
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids 1,5,7 --max-new-tokens 6 --ignore-eos > %s/g1.json && "
             "%s generate --model %s --prompt-ids 1,5,7 --max-new-tokens 6 --ignore-eos > %s/g2.json && cmp -s %s/g1.json %s/g2.json",
             halo, out1, dir, halo, out1, dir, dir, dir);
    CHECK(run(cmd) == 0, "halo generate runs and is deterministic");
    char *json, gpath[700];
    snprintf(gpath, sizeof gpath, "%s/g1.json", dir);
    if (halo_read_file(gpath, &json, NULL) == HALO_OK) {
        cJSON *j = cJSON_Parse(json);
        const cJSON *ids = cJSON_GetObjectItem(j, "generated_ids");
        CHECK(cJSON_GetArraySize(ids) == 6, "generate printed 6 ids: %s", json);
        // The same tokens from the library on the in-memory model.
        int32_t pr[3] = {1, 5, 7}, o6[6];
        int n;
        gen_options o = gen_options_default();
        o.max_new_tokens = 6; o.ignore_eos = 1;
        gen_generate(&m, pr, 3, &o, o6, &n);
        int same = n == 6;
        for (int i = 0; same && i < 6; i++) same &= cJSON_GetArrayItem(ids, i)->valueint == o6[i];
        CHECK(same, "CLI output equals library generation");
        cJSON_Delete(j);
        free(json);
    }
    snprintf(cmd, sizeof cmd, "%s export --checkpoint %s/nonexistent.safetensors --out %s/x 2> %s/err.txt", halo, dir, dir, dir);
    CHECK(run(cmd) == 1, "export of a missing checkpoint fails");
    llama_free(&m); llama_free(&f32); llama_free(&bf);
    adamw_free(&opt);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    run(cmd);
}

// `halo generate --chat` on a model whose tokenizer has a chat template (and no Llama 3 tokens) renders the prompt
// with that template: the prompt ids printed equal the tokenizer's ids of the rendering written out by hand.
static void test_chat_template_prompt(void) {
    char dir[] = "/tmp/halo_gen_ct_XXXXXX", cmd[2048];
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    snprintf(cmd, sizeof cmd, "cp %s/* %s/", test_shared_path("models/stories260K"), dir);
    CHECK(run(cmd) == 0, "copy stories260K");
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"chat_template\": \"{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}\"}", f);
    fclose(f);
    const char *b = getenv("BUILD");
    snprintf(cmd, sizeof cmd, "%s/halo generate --model %s --chat --system 'Be kind.' --prompt 'Once upon a time' "
             "--max-new-tokens 3 --json --device cpu > %s/out.json", b && *b ? b : "build", dir, dir);
    CHECK(run(cmd) == 0, "generate --chat with a template");
    snprintf(path, sizeof path, "%s/out.json", dir);
    char *json = NULL;
    halo_read_file(path, &json, NULL);
    cJSON *j = json ? cJSON_Parse(json) : NULL, *ids = cJSON_GetObjectItem(j, "prompt_ids");
    halo_tokenizer *tok = NULL;
    int32_t *want = NULL;
    size_t nw = 0;
    const char *text = "<|system|>Be kind.</s><|user|>Once upon a time</s><|assistant|>";
    int ok = tokenizer_load(dir, &tok) == HALO_OK && tokenizer_encode(tok, text, strlen(text), false, &want, &nw) == HALO_OK &&
             cJSON_IsArray(ids) && (size_t)cJSON_GetArraySize(ids) == nw;
    for (size_t i = 0; ok && i < nw; i++) ok = cJSON_GetArrayItem(ids, (int)i)->valueint == want[i];
    CHECK(ok, "prompt ids are the template's rendering '%s' (%zu ids): %s", text, nw, json ? json : "(no output)");
    free(want);
    // --interactive: turn 1 answers as the one-shot run does; turn 2 as the one-shot run of the whole conversation
    // rendered by hand with turn 1's answer; after /reset the first turn's answer again
    const cJSON *g1 = cJSON_GetObjectItem(j, "generated_text");
    char ans1[256] = "";
    if (cJSON_IsString(g1)) snprintf(ans1, sizeof ans1, "%s", g1->valuestring);
    snprintf(cmd, sizeof cmd, "printf 'Once upon a time\\nThen?\\n/reset\\nOnce upon a time\\n' | %s/halo generate "
             "--model %s --interactive --system 'Be kind.' --max-new-tokens 3 --device cpu > %s/chat.txt 2> %s/chat.err",
             b && *b ? b : "build", dir, dir, dir);
    CHECK(run(cmd) == 0, "generate --interactive");
    snprintf(path, sizeof path, "%s/chat.txt", dir);
    char *chat = NULL;
    halo_read_file(path, &chat, NULL);
    char two[1024];
    snprintf(two, sizeof two, "<|system|>Be kind.</s><|user|>Once upon a time</s><|assistant|>%s</s><|user|>Then?</s>"
             "<|assistant|>", ans1);
    int32_t *ids2 = NULL;
    size_t n2 = 0;
    tokenizer_encode(tok, two, strlen(two), false, &ids2, &n2);
    char list[4096] = "";
    for (size_t i = 0, k = 0; i < n2 && k + 16 < sizeof list; i++) k += (size_t)snprintf(list + k, sizeof list - k, i ? ",%d" : "%d", ids2[i]);
    snprintf(cmd, sizeof cmd, "%s/halo generate --model %s --prompt-ids %s --max-new-tokens 3 --json --device cpu > %s/two.json",
             b && *b ? b : "build", dir, list, dir);
    CHECK(run(cmd) == 0, "one-shot generation of the two-turn rendering");
    snprintf(path, sizeof path, "%s/two.json", dir);
    char *json2 = NULL;
    halo_read_file(path, &json2, NULL);
    cJSON *j2 = json2 ? cJSON_Parse(json2) : NULL;
    const cJSON *g2 = cJSON_GetObjectItem(j2, "generated_text");
    char want_chat[1024];
    snprintf(want_chat, sizeof want_chat, "%s\n%s\n%s\n", ans1, cJSON_IsString(g2) ? g2->valuestring : "?", ans1);
    CHECK(ans1[0] && chat && !strcmp(chat, want_chat), "--interactive output '%s' == turn 1, the two-turn rendering's "
          "answer, turn 1 again after /reset ('%s')", chat ? chat : "", want_chat);
    free(chat); free(json2); free(ids2);
    cJSON_Delete(j2);
    tokenizer_free(tok);
    cJSON_Delete(j);
    free(json);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    run(cmd);
}

// generation_config.json's eos_token_id list ends generation at any of its ids, as transformers' generate does: a
// greedy run's third token, added to the list, cuts the same run to three tokens.
static void test_generation_config_stops(void) {
    char dir[] = "/tmp/halo_gen_stop_XXXXXX", cmd[2048], path[512];
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    snprintf(cmd, sizeof cmd, "cp %s/* %s/ && rm %s/generation_config.json", test_shared_path("models/stories260K"), dir, dir);
    CHECK(run(cmd) == 0, "copy stories260K");
    const char *b = getenv("BUILD");
    int32_t got[2][16];
    int n[2] = {0, 0};
    for (int pass = 0; pass < 2; pass++) {
        snprintf(cmd, sizeof cmd, "%s/halo generate --model %s --prompt-ids 1,403,407 --max-new-tokens 8 --json "
                 "--device cpu > %s/out.json", b && *b ? b : "build", dir, dir);
        CHECK(run(cmd) == 0, "generate (pass %d)", pass);
        snprintf(path, sizeof path, "%s/out.json", dir);
        char *json = NULL;
        halo_read_file(path, &json, NULL);
        cJSON *j = json ? cJSON_Parse(json) : NULL, *ids = cJSON_GetObjectItem(j, "generated_ids");
        for (int i = 0; i < cJSON_GetArraySize(ids) && i < 16; i++) got[pass][n[pass]++] = cJSON_GetArrayItem(ids, i)->valueint;
        cJSON_Delete(j);
        free(json);
        if (pass == 0) {   // the third token becomes a stop id
            snprintf(path, sizeof path, "%s/generation_config.json", dir);
            FILE *f = fopen(path, "w");
            fprintf(f, "{\"eos_token_id\": [2, %d]}", n[0] >= 3 ? got[0][2] : -1);
            fclose(f);
        }
    }
    int cut = n[0] == 8 && got[0][0] != got[0][2] && got[0][1] != got[0][2] && n[1] == 3 &&
              !memcmp(got[0], got[1], 3 * sizeof(int32_t));
    CHECK(cut, "a stop id from generation_config.json ends generation: %d tokens, then %d", n[0], n[1]);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    run(cmd);
}

// gen_read_stops takes whole numbers in int32's range only: 2.5 is not token 2, and 3e9 or 1e300 (whose cast to
// int32 is undefined) are skipped, in a list as alone.
static void test_read_stops_range(void) {
    char dir[] = "/tmp/halo_gen_stops_XXXXXX", path[512];
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    static const struct { const char *json; int n; int32_t first; } cases[] = {
        {"{\"eos_token_id\": 2.5}", 0, 0},
        {"{\"eos_token_id\": 1e300}", 0, 0},
        {"{\"eos_token_id\": [1e300, 3e9, 2.5, 7]}", 1, 7},
        {"{\"eos_token_id\": [2, 128009]}", 2, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        FILE *f = fopen(path, "w");
        fputs(cases[i].json, f);
        fclose(f);
        gen_options o = gen_options_default();
        int rc = gen_read_stops(dir, &o);
        CHECK(rc == HALO_OK && o.n_stop == cases[i].n && (!o.n_stop || o.stop_ids[0] == cases[i].first),
              "%s: %d stop ids (first %d), want %d (first %d)", cases[i].json, o.n_stop, o.n_stop ? o.stop_ids[0] : 0,
              cases[i].n, cases[i].first);
    }
    remove(path);
    rmdir(dir);
}

int main(void) {
    test_read_stops_range();
    if (!test_shared()) SKIP("shared data folder not found (set HALO_SHARED); greedy golden skipped");
    else { test_greedy_golden(); test_chat_template_prompt(); test_generation_config_stops(); }
    test_export();
    TEST_END();
}
