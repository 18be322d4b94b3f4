// halo: fine-tune and train Llama-family models with HALO 8-bit matrix products. Entry point: dispatches verbs.
// Build with `make`; run `build/halo help`.
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"

// One line per verb; each is implemented in src/cli/cmd_<verb>.c.
#define VERB(f) int f(int argc, char **argv)
VERB(cmd_demo);
VERB(cmd_finetune);
VERB(cmd_eval);
VERB(cmd_debug_step);
VERB(cmd_generate);
VERB(cmd_export);
VERB(cmd_tokenize);
VERB(cmd_info);

static const struct { const char *name; halo_cmd_fn fn; const char *help; } VERBS[] = {
    {"demo", cmd_demo, "train a small Llama from scratch on a generated task and evaluate it"},
    {"finetune", cmd_finetune, "fine-tune a Hugging Face model on a dataset (text, JSONL, CSV); export the result"},
    {"train", cmd_finetune, "same as finetune"},
    {"eval", cmd_eval, "evaluate a model on a dataset: task accuracy from greedy generation, or loss"},
    {"debug-step", cmd_debug_step, "one forward/backward on a batch; write logits, loss and gradients"},
    {"generate", cmd_generate, "generate tokens from a model (greedy or sampled, with a KV cache)"},
    {"export", cmd_export, "write a checkpoint or model as a Hugging Face directory"},
    {"tokenize", cmd_tokenize, "encode text to ids or decode ids to text with a tokenizer.json"},
    {"info", cmd_info, "what a model directory holds and where halo runs it (no weights loaded)"},
};

static void usage(void) {
    printf("usage: halo <verb> [options]   (halo <verb> --help for the verb's options)\n\nverbs:\n");
    for (size_t i = 0; i < sizeof VERBS / sizeof VERBS[0]; i++) printf("  %-12s %s\n", VERBS[i].name, VERBS[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof VERBS / sizeof VERBS[0]; i++)
        if (!strcmp(argv[1], VERBS[i].name)) return VERBS[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "halo: unknown verb '%s'\n", argv[1]);
    usage();
    return 2;
}
