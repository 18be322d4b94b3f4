// File formats: safetensors round trips and every malformed-header case refused with the file and tensor named;
// config.json refusals naming the key; export then reload gives identical logits (F32) and close logits (BF16).
#include <cjson/cJSON.h>
#include <sys/stat.h>
#include "io/safetensors.h"
#include "model/llama.h"
#include "test.h"
#include "train/generate.h"
#include "util/error.h"
#include "util/fileio.h"

static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

// Writes a raw safetensors file from a header string and `data_len` bytes of data.
static void write_raw(const char *path, const char *header, size_t data_len) {
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(header);
    fwrite(&n, 8, 1, f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i * 7), f);
    fclose(f);
}

static void expect_error(const char *header, size_t data_len, const char *must_contain, const char *what) {
    const char *p = tmp_path("bad.safetensors");
    write_raw(p, header, data_len);
    st_file f;
    int rc = st_open(p, &f);
    CHECK(rc == HALO_ERR, "%s: accepted a malformed file", what);
    if (rc == HALO_OK) { st_close(&f); return; }
    CHECK(strstr(halo_error(), must_contain) && strstr(halo_error(), "bad.safetensors"),
          "%s: message '%s' should name the file and contain '%s'", what, halo_error(), must_contain);
}

static void test_safetensors(void) {
    unsigned long long s = 99;
    float a[6], b[4];
    for (int i = 0; i < 6; i++) a[i] = (float)t_rand_normal(&s);
    for (int i = 0; i < 4; i++) b[i] = (float)t_rand_normal(&s);
    st_writer *w = st_writer_new();
    int64_t sa[2] = {2, 3}, sb[1] = {4};
    st_writer_add(w, "a", ST_F32, ST_F32, a, 2, sa);
    st_writer_add(w, "b.bf16", ST_BF16, ST_F32, b, 1, sb);
    st_writer_meta(w, "k", "v");
    CHECK(st_writer_write(w, tmp_path("ok.safetensors")) == HALO_OK, "write: %s", halo_error());
    st_writer_free(w);
    st_file f;
    CHECK(st_open(tmp_path("ok.safetensors"), &f) == HALO_OK, "open: %s", halo_error());
    float ra[6], rb[4];
    CHECK(st_read_f32(&f, "a", ra, 2, sa) == HALO_OK && !memcmp(ra, a, sizeof a), "F32 round trip exact");
    CHECK(st_read_f32(&f, "b.bf16", rb, 1, sb) == HALO_OK, "bf16 read");
    double e = 0;
    for (int i = 0; i < 4; i++) e = fmax(e, fabs(rb[i] - b[i]) / fabs(b[i]));
    CHECK(e <= 1.0 / 256, "BF16 round trip within half an ulp of bf16 (%.3g)", e);
    CHECK(st_read_f32(&f, "a", ra, 1, sb) == HALO_ERR && strstr(halo_error(), "shape"), "shape mismatch named");
    CHECK(st_read_f32(&f, "nope", ra, 0, NULL) == HALO_ERR && strstr(halo_error(), "'nope'"), "missing tensor named");
    st_close(&f);

    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "JSON", "truncated JSON");
    expect_error("{\"t\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype", "unknown dtype");
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "'t'", "shape x size != range");
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "out of bounds", "out of bounds");
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "data_offsets", "reversed offsets");
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap", "overlap");
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape", "negative dim");
    expect_error("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype", "missing dtype");
    // header length larger than the file
    const char *p = tmp_path("short.safetensors");
    FILE *fp = fopen(p, "wb");
    uint64_t big = 1000;
    fwrite(&big, 8, 1, fp);
    fputs("{}", fp);
    fclose(fp);
    CHECK(st_open(p, &f) == HALO_ERR && strstr(halo_error(), "header length"), "bad header length: %s", halo_error());
    // truncated copy of a real file
    char *buf; size_t n;
    halo_read_file(tmp_path("ok.safetensors"), &buf, &n);
    fp = fopen(tmp_path("trunc.safetensors"), "wb");
    fwrite(buf, 1, n - 5, fp);
    fclose(fp);
    free(buf);
    CHECK(st_open(tmp_path("trunc.safetensors"), &f) == HALO_ERR && strstr(halo_error(), "out of bounds"),
          "truncated file refused: %s", halo_error());
}

// F16 weights (some checkpoints ship them): known bit patterns decode exactly, subnormals and infinities included.
static void test_f16(void) {
    const uint16_t h[8] = {0x3C00, 0xC000, 0x3800, 0x0001, 0x03FF, 0x7BFF, 0x7C00, 0x8000};
    const float want[8] = {1.0f, -2.0f, 0.5f, 5.9604645e-08f, 6.0975552e-05f, 65504.0f, INFINITY, -0.0f};
    const char *p = tmp_path("f16.safetensors");
    FILE *f = fopen(p, "wb");
    const char *hdr = "{\"h\":{\"dtype\":\"F16\",\"shape\":[8],\"data_offsets\":[0,16]}}";
    uint64_t n = strlen(hdr);
    fwrite(&n, 8, 1, f);
    fwrite(hdr, 1, n, f);
    fwrite(h, 2, 8, f);
    fclose(f);
    st_file sf;
    float got[8];
    int64_t shape[1] = {8};
    CHECK(st_open(p, &sf) == HALO_OK && st_read_f32(&sf, "h", got, 1, shape) == HALO_OK, "F16 read: %s", halo_error());
    for (int i = 0; i < 8; i++) CHECK(got[i] == want[i] && signbit(got[i]) == signbit(want[i]), "F16 0x%04x -> %g, want %g", h[i], got[i], want[i]);
    st_close(&sf);
}

static void write_text(const char *path, const char *text) { FILE *f = fopen(path, "w"); fputs(text, f); fclose(f); }

static void expect_config_error(const char *json, const char *key) {
    write_text(tmp_path("config.json"), json);
    llama_config c;
    int rc = llama_config_load(tmp_path("config.json"), &c);
    CHECK(rc == HALO_ERR && strstr(halo_error(), key), "config refusal should name '%s': %s", key,
          rc == HALO_ERR ? halo_error() : "accepted");
}

#define BASE "\"vocab_size\":32,\"hidden_size\":16,\"intermediate_size\":24,\"num_hidden_layers\":1,\"num_attention_heads\":2"
static void test_config(void) {
    expect_config_error("{\"architectures\":[\"GemmaForCausalLM\"]," BASE "}", "architectures");
    expect_config_error("{\"model_type\":\"mistral\"," BASE ",\"sliding_window\":0}", "sliding_window");
    expect_config_error("{\"model_type\":\"gpt2\"}", "model_type");
    expect_config_error("{\"model_type\":\"qwen2\"," BASE ",\"use_sliding_window\":true}", "use_sliding_window");
    expect_config_error("{" BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", "yarn");
    expect_config_error("{" BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}", "llama3");
    expect_config_error("{\"hidden_size\":16}", "vocab_size");
    expect_config_error("{" BASE ",\"num_key_value_heads\":3}", "num_key_value_heads");
    expect_config_error("{" BASE ",\"hidden_act\":\"gelu\"}", "hidden_act");
    write_text(tmp_path("config.json"), "{" BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,"
               "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192},"
               "\"rope_theta\":500000.0,\"eos_token_id\":[128001,128008]}");
    llama_config c;
    CHECK(llama_config_load(tmp_path("config.json"), &c) == HALO_OK, "llama3 rope scaling accepted: %s", halo_error());
    CHECK(c.rope_scaling == ROPE_SCALING_LLAMA3 && c.rope_factor == 8.0f && c.rope_original_max_pos == 8192 &&
          c.eos_id == 128001 && c.head_dim == 8 && c.n_kv_heads == 2, "llama3 config fields parsed");
}

// Mistral: the same layers as Llama. A model with MistralForCausalLM's config gives Llama's logits bit for bit, its
// window bounds sequence lengths (training, generation), and export keeps the architecture and the window.
static void test_mistral(void) {
    if (!test_shared()) { SKIP("shared data folder not found; Mistral config test skipped"); return; }
    llama_model m, r;
    CHECK(llama_load(&m, test_shared_path("models/stories260K")) == HALO_OK, "%s", halo_error());
    char *js = llama_config_to_json(&m.cfg, "float32", 1);
    cJSON *j = cJSON_Parse(js);   // the same config as Mistral's, with a 32-position window
    free(js);
    cJSON_ReplaceItemInObject(j, "architectures", cJSON_CreateStringArray((const char *[]){"MistralForCausalLM"}, 1));
    cJSON_ReplaceItemInObject(j, "model_type", cJSON_CreateString("mistral"));
    cJSON_AddNumberToObject(j, "sliding_window", 32);
    js = cJSON_Print(j);
    cJSON_Delete(j);
    halo_mkdirs(tmp_path("mistral"));
    write_text(tmp_path("mistral/config.json"), js);
    free(js);
    CHECK(llama_save_hf(&m, tmp_path("mistral_w"), "float32", NULL) == HALO_OK, "%s", halo_error());
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp %s %s", tmp_path("mistral_w/model.safetensors"), tmp_path("mistral/model.safetensors"));
    CHECK(system(cmd) == 0, "copy weights");
    CHECK(llama_load(&r, tmp_path("mistral")) == HALO_OK && r.cfg.arch == ARCH_MISTRAL && r.cfg.sliding_window == 32,
          "Mistral config loads with its window: %s", halo_error());
    halo_batch b;
    halo_batch_alloc(&b, 2, 32);
    unsigned long long st = 11;
    for (int i = 0; i < 64; i++) b.input_ids[i] = (int32_t)(t_rng_next(&st) % (uint64_t)m.cfg.vocab_size);
    halo_batch_shift_targets(&b);
    const size_t nl = (size_t)64 * m.cfg.vocab_size;
    float *l1 = malloc(4 * nl), *l2 = malloc(4 * nl);
    llama_forward(&m, &b, l1);
    llama_forward(&r, &b, l2);
    CHECK(!memcmp(l1, l2, 4 * nl), "MistralForCausalLM logits equal LlamaForCausalLM's bit for bit");
    CHECK(llama_config_check_len(&r.cfg, 32, "len") == HALO_OK && llama_config_check_len(&r.cfg, 33, "len") == HALO_ERR &&
          strstr(halo_error(), "sliding_window of 32") && llama_config_check_len(&m.cfg, 100000, "len") == HALO_OK,
          "the window bounds lengths: %s", halo_error());
    gen_options go = gen_options_default();
    go.max_new_tokens = 29;
    int32_t out[64];
    int n_out;
    CHECK(gen_generate(&r, b.input_ids, 3, &go, out, &n_out) == HALO_OK, "3 + 29 positions fit: %s", halo_error());
    go.max_new_tokens = 30;
    CHECK(gen_generate(&r, b.input_ids, 3, &go, out, &n_out) == HALO_ERR && strstr(halo_error(), "sliding_window"),
          "3 + 30 positions refused: %s", halo_error());
    CHECK(llama_save_hf(&r, tmp_path("mistral_out"), "float32", NULL) == HALO_OK, "%s", halo_error());
    char *text = NULL;
    cJSON *e = halo_read_file(tmp_path("mistral_out/config.json"), &text, NULL) == HALO_OK ? cJSON_Parse(text) : NULL;
    const cJSON *ea = cJSON_GetArrayItem(cJSON_GetObjectItem(e, "architectures"), 0), *em = cJSON_GetObjectItem(e, "model_type");
    const cJSON *ew = cJSON_GetObjectItem(e, "sliding_window");
    CHECK(cJSON_IsString(ea) && !strcmp(ea->valuestring, "MistralForCausalLM") && cJSON_IsString(em) &&
          !strcmp(em->valuestring, "mistral") && cJSON_IsNumber(ew) && ew->valueint == 32,
          "export keeps the architecture and the window: %s", text ? text : "");
    cJSON_Delete(e);
    free(text);
    // the tokenizer files travel with an export, the chat template's own file (transformers 4.43+) included
    write_text(tmp_path("mistral/chat_template.jinja"), "{{ messages[0]['content'] }}\n");
    CHECK(llama_save_hf(&r, tmp_path("mistral_tok"), "float32", tmp_path("mistral")) == HALO_OK, "%s", halo_error());
    text = NULL;
    CHECK(halo_read_file(tmp_path("mistral_tok/chat_template.jinja"), &text, NULL) == HALO_OK && text &&
          !strcmp(text, "{{ messages[0]['content'] }}\n"), "chat_template.jinja copied by the export");
    free(text);
    free(l1); free(l2);
    halo_batch_free(&b);
    llama_free(&r);
    llama_free(&m);
}

static void test_export_reload(void) {
    llama_config c = {.vocab_size = 37, .dim = 24, .hidden_dim = 40, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                      .head_dim = 6, .max_pos = 64, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tie_embeddings = 0,
                      .bos_id = 1, .eos_id = 2};
    for (int tied = 0; tied < 2; tied++) {
        c.tie_embeddings = tied;
        llama_model m, r;
        CHECK(llama_init(&m, &c) == HALO_OK, "init");
        llama_init_random(&m, 7 + tied);
        halo_batch b;
        halo_batch_alloc(&b, 2, 9);
        unsigned long long s = 5;
        for (int i = 0; i < 18; i++) b.input_ids[i] = (int32_t)(t_rng_next(&s) % 37);
        halo_batch_shift_targets(&b);
        float *l1 = malloc(4 * 18 * 37), *l2 = malloc(4 * 18 * 37);
        llama_forward(&m, &b, l1);
        CHECK(llama_save_hf(&m, tmp_path("export_f32"), "float32", NULL) == HALO_OK, "export: %s", halo_error());
        CHECK(llama_load(&r, tmp_path("export_f32")) == HALO_OK, "reload: %s", halo_error());
        llama_forward(&r, &b, l2);
        CHECK(!memcmp(l1, l2, 4 * 18 * 37), "F32 export/reload gives identical logits (tied=%d)", tied);
        llama_free(&r);
        CHECK(llama_save_hf(&m, tmp_path("export_bf16"), "bfloat16", NULL) == HALO_OK, "export bf16: %s", halo_error());
        CHECK(llama_load(&r, tmp_path("export_bf16")) == HALO_OK, "reload bf16: %s", halo_error());
        llama_forward(&r, &b, l2);
        double e = rel_l2_f(l2, l1, 18 * 37);
        CHECK(e < 2e-2, "BF16 export logits close (rel %.3g)", e);
        llama_free(&r);
        // a corrupted model file is refused with the file named
        const char *mp = tmp_path("export_bf16/model.safetensors");
        FILE *fp = fopen(mp, "r+b");
        fseek(fp, 8, SEEK_SET);
        fputs("{\"x", fp);
        fclose(fp);
        CHECK(llama_load(&r, tmp_path("export_bf16")) == HALO_ERR && strstr(halo_error(), "model.safetensors"),
              "corrupted model.safetensors refused: %s", halo_error());
        free(l1); free(l2);
        halo_batch_free(&b);
        llama_free(&m);
    }
}

static void test_sharded(void) {
    const char *shared = test_shared();
    if (!shared) { SKIP("shared data folder not found; sharded-load test skipped"); return; }
    // Split stories260K into two shards plus an index, as HF writes large models; logits must be identical.
    llama_model m, r;
    CHECK(llama_load(&m, test_shared_path("models/stories260K")) == HALO_OK, "%s", halo_error());
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tmp_path("sharded"));
    halo_mkdirs(dir);
    llama_config_save(&m.cfg, tmp_path("sharded/config.json"), "float32");
    st_writer *w1 = st_writer_new(), *w2 = st_writer_new();
    FILE *idx = fopen(tmp_path("sharded/model.safetensors.index.json"), "w");
    fprintf(idx, "{\"metadata\":{},\"weight_map\":{");
    for (int i = 0; i < m.n_table; i++) {
        const llama_param *p = &m.table[i];
        st_writer_add(i % 2 ? w2 : w1, p->name, ST_F32, ST_F32, m.params + p->offset, p->ndim, p->shape);
        fprintf(idx, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"", i ? "," : "", p->name, i % 2 + 1);
    }
    fprintf(idx, "}}");
    fclose(idx);
    st_writer_write(w1, tmp_path("sharded/model-00001-of-00002.safetensors"));
    st_writer_write(w2, tmp_path("sharded/model-00002-of-00002.safetensors"));
    st_writer_free(w1); st_writer_free(w2);
    CHECK(llama_load(&r, dir) == HALO_OK, "sharded load: %s", halo_error());
    CHECK(r.n_params == m.n_params && !memcmp(r.params, m.params, 4 * m.n_params), "sharded weights identical");
    llama_free(&r);
    llama_free(&m);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/halo_test_formats_%d", (int)getpid());
    mkdir(tmpdir, 0755);
    test_safetensors();
    test_f16();
    test_config();
    test_export_reload();
    test_mistral();
    test_sharded();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) {}
    TEST_END();
}
