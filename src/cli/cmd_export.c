// `halo export`: writes a Hugging Face model directory (config.json + model.safetensors, F32 or BF16) from a
// training checkpoint, so that transformers, `halo generate` or any HF-layout tool can load the trained model.
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include "cli/cli.h"
#include "model/llama.h"
#include "train/checkpoint.h"
#include "util/error.h"

static void usage(void) {
    printf("usage: halo export --checkpoint FILE|DIR --out DIR [--dtype f32|bf16] [--tokenizer DIR]\n"
           "  --checkpoint   a checkpoint file, or a folder (its newest step_*.safetensors)\n"
           "  --out          the Hugging Face directory to write\n"
           "  --dtype        f32 (default, exact) or bf16\n"
           "  --tokenizer    copy tokenizer files from this folder\n");
}

int cmd_export(int argc, char **argv) {
    const char *ckpt = NULL, *out = NULL, *dtype = "f32", *tok = NULL, *s;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_flag(a, "--help") || cli_is_flag(a, "-h")) { usage(); return 0; }
        else if ((s = cli_flag_value(argc, argv, &i, "--checkpoint"))) ckpt = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--out"))) out = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--dtype"))) dtype = s;
        else if ((s = cli_flag_value(argc, argv, &i, "--tokenizer"))) tok = s;
        else { fprintf(stderr, "halo export: unknown option '%s' (see --help)\n", a); return 2; }
    }
    if (!ckpt || !out) { usage(); return 2; }
    const char *torch_dtype = !strcmp(dtype, "f32") || !strcmp(dtype, "float32") ? "float32"
                            : !strcmp(dtype, "bf16") || !strcmp(dtype, "bfloat16") ? "bfloat16" : NULL;
    if (!torch_dtype) { fprintf(stderr, "halo export: --dtype must be f32 or bf16, not '%s'\n", dtype); return 2; }
    char path[4096];
    struct stat st;
    if (stat(ckpt, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (checkpoint_find_latest(ckpt, path, sizeof path)) { fprintf(stderr, "halo export: %s\n", halo_error()); return 1; }
    } else snprintf(path, sizeof path, "%s", ckpt);
    llama_config cfg;
    checkpoint_meta meta;
    llama_model m;
    if (checkpoint_read_meta(path, &cfg, &meta)) { fprintf(stderr, "halo export: %s\n", halo_error()); return 1; }
    checkpoint_meta_free(&meta);
    if (llama_init(&m, &cfg)) { fprintf(stderr, "halo export: %s\n", halo_error()); return 1; }
    int rc = 1;
    if (checkpoint_load(path, &m, NULL, &meta)) fprintf(stderr, "halo export: %s\n", halo_error());
    else if (llama_save_hf(&m, out, torch_dtype, tok)) fprintf(stderr, "halo export: %s\n", halo_error());
    else {
        printf("exported %s (step %lld, %.2fM params) to %s as %s\n", path, (long long)meta.step, m.n_params / 1e6, out, torch_dtype);
        rc = 0;
    }
    checkpoint_meta_free(&meta);
    llama_free(&m);
    return rc;
}
