// Shared options of the model-running verbs (see common.h).
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>
#include "cli/cli.h"
#include "cli/common.h"
#include "io/safetensors.h"
#include "model/lora.h"
#include "util/error.h"
#include "util/fileio.h"

halo_common_opts halo_common_opts_default(void) {
    halo_common_opts o;
    memset(&o, 0, sizeof o);
    o.hc = model_halo_config_default();
    return o;
}

void halo_common_usage(void) {
    printf("precision (every block linear: q, k, v, o, gate, up, down):\n"
           "  --precision fp32|bf16|int8|fp8 (fp32)  --halo-level 0|1|2 (int8: 2, fp8: 0 when not given)\n"
           "  --halo-linears all|q,k,v,o,gate,up,down   --halo-skip-first N  --halo-skip-last N (blocks kept in fp32)\n"
           "  --halo-scale tensor|row|block1x128|block128   --halo-grad-e5m2   --halo-stochastic\n"
           "  --halo-hadamard-block N (block-diagonal rotation)   --halo-telemetry N (quantization errors every N steps)\n"
           "  --halo-token-block N (level 2: token rotation in blocks of N tokens, a power of two on the GPU; faster)\n"
           "  --halo-delayed-scaling (beyond the spec: X, W and E_Y scaled by their previous call's absmax; faster on the GPU)\n");
}

int halo_common_opts_parse(halo_common_opts *o, int argc, char **argv, int *i) {
    const char *v;
    long n;
    if ((v = cli_flag_value(argc, argv, i, "--precision"))) {
        const char *names[] = {"fp32", "bf16", "int8", "fp8"};
        int k = 0;
        while (k < 4 && strcmp(v, names[k])) k++;
        if (k == 4) return halo_fail("--precision: '%s' is not fp32, bf16, int8 or fp8", v), -1;
        o->hc.prec = (halo_precision)k;
        if (!o->level_given) o->hc.level = o->hc.prec == HALO_PREC_INT8 ? 2 : 0;   // the paper's pairings
        o->given = 1;
        return 1;
    }
    if ((v = cli_flag_value(argc, argv, i, "--halo-level"))) {
        if (cli_parse_int("--halo-level", v, &n) || n < 0 || n > 2) return halo_fail("--halo-level: '%s' is not 0, 1 or 2", v), -1;
        o->hc.level = (int)n; o->level_given = 1; o->given = 1;
        return 1;
    }
    if ((v = cli_flag_value(argc, argv, i, "--halo-linears"))) {
        if (model_halo_parse_linears(v, &o->hc.kinds)) return halo_fail_ctx("--halo-linears: "), -1;
        o->given = 1;
        return 1;
    }
    if ((v = cli_flag_value(argc, argv, i, "--halo-skip-first"))) {
        if (cli_parse_int("--halo-skip-first", v, &n) || n < 0) return -1;
        o->hc.skip_first = (int)n; o->given = 1;
        return 1;
    }
    if ((v = cli_flag_value(argc, argv, i, "--halo-skip-last"))) {
        if (cli_parse_int("--halo-skip-last", v, &n) || n < 0) return -1;
        o->hc.skip_last = (int)n; o->given = 1;
        return 1;
    }
    if ((v = cli_flag_value(argc, argv, i, "--halo-scale"))) {
        const char *names[] = {"tensor", "row", "block1x128", "block128"};
        int k = 0;
        while (k < 4 && strcmp(v, names[k])) k++;
        if (k == 4) return halo_fail("--halo-scale: '%s' is not tensor, row, block1x128 or block128", v), -1;
        o->hc.gran = (halo_granularity)k; o->given = 1;
        return 1;
    }
    if ((v = cli_flag_value(argc, argv, i, "--halo-hadamard-block"))) {
        if (cli_parse_int("--halo-hadamard-block", v, &n) || n < 0) return -1;
        o->hc.had_block = (int)n; o->given = 1;
        return 1;
    }
    if ((v = cli_flag_value(argc, argv, i, "--halo-token-block"))) {
        if (cli_parse_int("--halo-token-block", v, &n) || n < 0) return -1;
        o->hc.had_block_b = (int)n; o->given = 1;
        return 1;
    }
    if ((v = cli_flag_value(argc, argv, i, "--halo-telemetry"))) {
        if (cli_parse_int("--halo-telemetry", v, &n) || n < 0) return -1;
        o->telemetry_every = (int)n;
        return 1;
    }
    if (cli_is_flag(argv[*i], "--halo-grad-e5m2")) { o->hc.grad_e5m2 = 1; o->given = 1; return 1; }
    if (cli_is_flag(argv[*i], "--halo-stochastic")) { o->hc.stochastic = 1; o->given = 1; return 1; }
    if (cli_is_flag(argv[*i], "--halo-delayed-scaling")) { o->hc.delayed = 1; o->given = 1; return 1; }
    return 0;
}

int cli_dataset_opts_parse(dataset_config *dc, int argc, char **argv, int *i) {
    const char *v;
    long n;
    if ((v = cli_flag_value(argc, argv, i, "--preset"))) dc->preset = v;
    else if ((v = cli_flag_value(argc, argv, i, "--prompt-template"))) dc->prompt_template = v;
    else if ((v = cli_flag_value(argc, argv, i, "--answer-template"))) dc->answer_template = v;
    else if ((v = cli_flag_value(argc, argv, i, "--prompt-field"))) dc->prompt_field = v;
    else if ((v = cli_flag_value(argc, argv, i, "--answer-field"))) dc->answer_field = v;
    else if ((v = cli_flag_value(argc, argv, i, "--plain-template"))) dc->plain_template = v;
    else if ((v = cli_flag_value(argc, argv, i, "--system"))) dc->system_prompt = v;
    else if ((v = cli_flag_value(argc, argv, i, "--chat"))) {
        if (!strcmp(v, "auto")) dc->chat = DATASET_CHAT_AUTO;
        else if (!strcmp(v, "llama3")) dc->chat = DATASET_CHAT_LLAMA3;
        else if (!strcmp(v, "llama2")) dc->chat = DATASET_CHAT_LLAMA2;
        else if (!strcmp(v, "plain")) dc->chat = DATASET_CHAT_PLAIN;
        else if (!strcmp(v, "template")) dc->chat = DATASET_CHAT_TEMPLATE;
        else return halo_fail("--chat: '%s' is not one of auto, llama3, llama2, plain, template", v), -1;
    }
    else if ((v = cli_flag_value(argc, argv, i, "--seq-len"))) {
        if (cli_parse_range("--seq-len", v, 2, 1 << 20, &n)) return -1;
        dc->seq_len = (int)n;
    }
    else if ((v = cli_flag_value(argc, argv, i, "--val-fraction"))) { if (cli_parse_float("--val-fraction", v, &dc->val_fraction)) return -1; }
    else if ((v = cli_flag_value(argc, argv, i, "--val-count"))) { if (cli_parse_range("--val-count", v, 0, 1L << 62, &dc->val_count)) return -1; }
    else if (cli_is_flag(argv[*i], "--pack")) dc->pack = true;
    else if (cli_is_flag(argv[*i], "--loss-on-all")) dc->loss_on_all = true;
    else if (cli_is_flag(argv[*i], "--loss-last-turn")) dc->loss_last_turn = true;
    else if (cli_is_flag(argv[*i], "--skip-bad-lines")) dc->skip_bad_lines = true;
    else return 0;
    return 1;
}

int halo_common_apply(halo_common_opts *o, llama_model *m) {
    if (o->hc.skip_first + o->hc.skip_last > m->cfg.n_layers)
        return halo_fail("--halo-skip-first %d + --halo-skip-last %d exceed the model's %d blocks", o->hc.skip_first,
                         o->hc.skip_last, m->cfg.n_layers);
    if (o->hc.had_block_b && (o->hc.level != 2 || (o->hc.prec != HALO_PREC_INT8 && o->hc.prec != HALO_PREC_FP8)))
        return halo_fail("--halo-token-block %d: the token rotation is HALO level 2's (int8 or fp8 with --halo-level "
                         "2); this run is %s level %d", o->hc.had_block_b, halo_precision_name(o->hc.prec), o->hc.level);
    if (llama_set_halo(m, &o->hc) != HALO_OK) return HALO_ERR;
    model_halo_describe(&o->hc, m->cfg.n_layers, o->desc, sizeof o->desc);
    return HALO_OK;
}

int halo_common_apply_dir(halo_common_opts *o, llama_model *m, const char *model_dir) {
    if (!o->given && model_dir) {
        int found;
        if (halo_config_read(model_dir, &o->hc, &found) != HALO_OK) return HALO_ERR;
        if (found) {
            char *p = halo_path_join(model_dir, "halo_config.json");
            fprintf(stderr, "halo: using the precision recorded in %s\n", p);
            free(p);
        }
    }
    return halo_common_apply(o, m);
}

int cli_adapter_device(const char *adapter, int gpu_ok, int *use_cuda) {
    if (!adapter || gpu_ok) return HALO_OK;
    if (*use_cuda == 1)
        return halo_fail("--adapter: on the GPU, LoRA adapters run in `eval --task loss` only; generation with them "
                         "runs on the CPU model (use --device cpu)");
    *use_cuda = 0;
    return HALO_OK;
}

// A note when the adapter names a local base model other than --model (same shapes load silently otherwise).
static void check_adapter_base(const char *adapter, const char *model_dir) {
    char *p = halo_path_join(adapter, "adapter_config.json"), *text = NULL;
    cJSON *r = halo_read_file(p, &text, NULL) == HALO_OK ? cJSON_Parse(text) : NULL;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(r, "base_model_name_or_path");
    char *want = cJSON_IsString(b) ? realpath(b->valuestring, NULL) : NULL, *got = realpath(model_dir, NULL);
    if (want && got && strcmp(want, got))
        fprintf(stderr, "halo: note: %s was trained on %s, and --model is %s\n", p, want, got);
    free(want); free(got); free(text); free(p);
    cJSON_Delete(r);
}

int cli_load_model(llama_model *m, const char *model_dir, const char *adapter, halo_common_opts *co) {
    if (llama_load(m, model_dir) != HALO_OK) return HALO_ERR;
    if (adapter) {
        check_adapter_base(adapter, model_dir);
        if (llama_lora_load(m, adapter) != HALO_OK) { llama_free(m); return HALO_ERR; }
        char d[160];
        lora_describe(llama_get_lora(m), d, sizeof d);
        fprintf(stderr, "halo: adapter %s: %s\n", adapter, d);
    }
    if (halo_common_apply_dir(co, m, adapter ? adapter : model_dir) != HALO_OK) { llama_free(m); return HALO_ERR; }
    return HALO_OK;
}

const char *halo_common_describe(const halo_common_opts *o) { return o->desc[0] ? o->desc : "fp32 (HALO off)"; }

int halo_common_save(const halo_common_opts *o, const llama_model *m, const char *dir) {
    const model_halo_config *hc = llama_get_halo(m);
    return hc ? halo_config_write(hc, dir) : HALO_OK;
}

int halo_config_write(const model_halo_config *hc, const char *dir) {
    char *json = model_halo_config_to_json(hc), *p = halo_path_join(dir, "halo_config.json");
    size_t n = strlen(json);
    const void *parts[1] = {json};
    int rc = halo_write_file_atomic(p, parts, &n, 1);
    free(json); free(p);
    return rc;
}

int halo_config_read(const char *dir, model_halo_config *hc, int *found) {
    char *p = halo_path_join(dir, "halo_config.json"), *text = NULL;
    int rc = HALO_OK;
    *found = halo_file_exists(p);
    if (*found) {
        rc = halo_read_file(p, &text, NULL);
        if (rc == HALO_OK) rc = model_halo_config_from_json(text, p, hc);
    }
    free(text); free(p);
    return rc;
}

void halo_set_threads(int n) { if (n > 0) omp_set_num_threads(n); }

double halo_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
