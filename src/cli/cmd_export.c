// `halo export`: writes a Hugging Face model directory (config.json + model.safetensors, F32 or BF16) from a
// training checkpoint, so that transformers, `halo generate` or any HF-layout tool can load the trained model. A LoRA
// run's checkpoint (its adapters only) becomes a PEFT adapter directory, or with --merge and the base model the whole
// merged model; a PEFT adapter directory (--adapter, ours or PEFT's) merged into its base model likewise. A HALO
// run's precision goes into halo_config.json, so that `halo eval` runs the trained forward.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "cli/cli.h"
#include "cli/common.h"
#include "model/llama.h"
#include "model/lora.h"
#include "train/checkpoint.h"
#include "util/error.h"
#include "util/fileio.h"

static void usage(void) {
    printf("usage: halo export --checkpoint FILE|DIR --out DIR [--dtype f32|bf16] [--tokenizer DIR] [--model DIR [--merge]]\n"
           "       halo export --adapter DIR --model DIR --out DIR [--dtype f32|bf16] [--tokenizer DIR]\n"
           "  --checkpoint   a checkpoint file, or a folder (its newest step_*.safetensors)\n"
           "  --adapter      a PEFT LoRA adapter directory (finetune --lora's, or PEFT's): written merged into --model\n"
           "  --out          the Hugging Face directory to write (a LoRA checkpoint: a PEFT adapter directory)\n"
           "  --dtype        f32 (default, exact) or bf16\n"
           "  --tokenizer    copy tokenizer files from this folder\n"
           "  --model        a LoRA checkpoint's base model (written into adapter_config.json as\n"
           "                 base_model_name_or_path; needed by --merge)\n"
           "  --merge        a LoRA checkpoint: write the whole model with the adapters merged into the weights\n");
}

// DIR/halo_config.json from the checkpoint's precision (the app metadata of a HALO finetune run), when it has one.
static int save_precision(const checkpoint_meta *meta, const char *path, const char *out) {
    if (!meta->app_json || !strstr(meta->app_json, "\"precision\"")) return HALO_OK;
    model_halo_config hc;
    if (model_halo_config_from_json(meta->app_json, path, &hc)) return HALO_ERR;
    return hc.prec == HALO_PREC_FP32 ? HALO_OK : halo_config_write(&hc, out);
}

// --adapter DIR --model BASE: the base with the adapter merged, as a Hugging Face directory; the adapter's
// halo_config.json (a LoRA run under HALO) goes along.
static int export_adapter_merged(const char *adapter, const char *base_dir, const char *out, const char *torch_dtype,
                                 const char *tok) {
    if (!base_dir) return halo_fail("--adapter: give the adapter's base model with --model DIR");
    llama_model m;
    if (llama_load(&m, base_dir)) return HALO_ERR;
    int rc = llama_lora_load(&m, adapter);
    model_halo_config hc;
    int has_hc = 0;
    if (rc == HALO_OK) rc = halo_config_read(adapter, &hc, &has_hc);
    has_hc = has_hc && rc == HALO_OK && hc.prec != HALO_PREC_FP32;
    if (rc == HALO_OK) {
        if (has_hc)
            fprintf(stderr, "halo export: note: %s trained under HALO: the merged weights' quantized forward is not the "
                    "trained one's (HALO(W) + adapter); the adapter itself reproduces it\n", adapter);
        llama_lora_merge(&m);
        rc = llama_save_hf(&m, out, torch_dtype, tok ? tok : base_dir);
    }
    if (rc == HALO_OK && has_hc) rc = halo_config_write(&hc, out);
    if (rc == HALO_OK) printf("exported %s merged into %s to %s as %s\n", adapter, base_dir, out, torch_dtype);
    llama_free(&m);
    return rc;
}

// A hint when --checkpoint names a PEFT adapter (its folder, or a file in it) rather than a training checkpoint.
static const char *adapter_hint(const char *ckpt) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", ckpt);
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    }
    char *p = halo_path_join(dir, "adapter_config.json");
    const int is_adapter = halo_file_exists(p);
    free(p);
    return is_adapter ? " (that is a PEFT adapter, not a training checkpoint: merge it into its base with `halo export "
                        "--adapter DIR --model BASE --out DIR`)" : "";
}

int cmd_export(int argc, char **argv) {
    const char *ckpt = NULL, *out = NULL, *dtype = "f32", *tok = NULL, *base_dir = NULL, *adapter = NULL, *s;
    int merge = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_flag(a, "--help") || cli_is_flag(a, "-h")) { usage(); return 0; }
        else if ((s = cli_flag_value(argc, argv, &i, "--checkpoint"))) ckpt = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--out"))) out = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--dtype"))) dtype = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--tokenizer"))) tok = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--model"))) base_dir = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--adapter"))) adapter = s;
        else if (cli_is_flag(a, "--merge")) merge = 1;
        else { fprintf(stderr, "halo export: unknown option '%s' (see --help)\n", a); return 2; }
    }
    if (ckpt && adapter) { fprintf(stderr, "halo export: give --checkpoint or --adapter, not both\n"); return 2; }
    if (!(ckpt || adapter) || !out) { usage(); return 2; }
    const char *torch_dtype = !strcmp(dtype, "f32") || !strcmp(dtype, "float32") ? "float32"
                            : !strcmp(dtype, "bf16") || !strcmp(dtype, "bfloat16") ? "bfloat16" : NULL;
    if (!torch_dtype) { fprintf(stderr, "halo export: --dtype must be f32 or bf16, not '%s'\n", dtype); return 2; }
    if (adapter) {   // an adapter is always written merged (unmerged it is already what it is)
        if (export_adapter_merged(adapter, base_dir, out, torch_dtype, tok) == HALO_OK) return 0;
        fprintf(stderr, "halo export: %s\n", halo_error());
        return 1;
    }
    char path[4096];
    struct stat st;
    if (stat(ckpt, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (checkpoint_find_latest(ckpt, path, sizeof path)) {
            fprintf(stderr, "halo export: %s%s\n", halo_error(), adapter_hint(ckpt));
            return 1;
        }
    } else snprintf(path, sizeof path, "%s", ckpt);
    llama_config cfg;
    checkpoint_meta meta;
    llama_model m;
    if (checkpoint_read_meta(path, &cfg, &meta)) {
        fprintf(stderr, "halo export: %s%s\n", halo_error(), adapter_hint(ckpt));
        return 1;
    }
    lora_config lc;
    const int lora = meta.lora_json != NULL;
    int rc = lora ? lora_config_from_json(meta.lora_json, path, &lc) : HALO_OK;
    checkpoint_meta_free(&meta);
    if (rc == HALO_OK && merge && !lora) rc = halo_fail("--merge: %s is not a LoRA run's checkpoint", path);
    if (rc == HALO_OK && merge && !base_dir) rc = halo_fail("--merge: give the LoRA run's base model with --model DIR");
    if (rc != HALO_OK) { fprintf(stderr, "halo export: %s\n", halo_error()); return 1; }
    // the weights: the base model's (a merge), else the checkpoint's own (zeros under a LoRA checkpoint's adapters)
    if (merge ? llama_load(&m, base_dir) : llama_init(&m, &cfg)) { fprintf(stderr, "halo export: %s\n", halo_error()); return 1; }
    if (lora && llama_lora_enable(&m, &lc, 0)) { fprintf(stderr, "halo export: %s\n", halo_error()); llama_free(&m); return 1; }
    rc = checkpoint_load(path, &m, NULL, &meta);   // checks a merge's base model against the checkpoint's config
    if (rc == HALO_OK && lora && !merge) {
        char *base = base_dir ? realpath(base_dir, NULL) : NULL;
        rc = llama_lora_save(&m, out, base ? base : base_dir, !strcmp(torch_dtype, "bfloat16"));
        free(base);
    } else if (rc == HALO_OK) {
        llama_lora_merge(&m);
        rc = llama_save_hf(&m, out, torch_dtype, tok ? tok : base_dir);
    }
    if (rc == HALO_OK) rc = save_precision(&meta, path, out);
    if (rc == HALO_OK)
        printf("exported %s (step %lld%s) to %s as %s\n", path, (long long)meta.step,
               lora && !merge ? ", a LoRA adapter" : lora ? ", LoRA merged" : "", out, torch_dtype);
    else fprintf(stderr, "halo export: %s\n", halo_error());
    if (rc == HALO_OK) checkpoint_meta_free(&meta);
    llama_free(&m);
    return rc == HALO_OK ? 0 : 1;
}
