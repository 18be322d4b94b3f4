// Training checkpoints: one safetensors file holding the parameters (HF names; a LoRA run: its adapters only, PEFT
// names, with the adapters' configuration in metadata 'lora'), the AdamW moments
// ("optim.m.<name>", "optim.v.<name>", all F32) and __metadata__ with the step, data position, RNG state, the
// model config and the training options as JSON. Written atomically (temp file, fsync, rename), so a killed run
// leaves either the previous file or the new one, never a torn one.
#ifndef HALO_CHECKPOINT_H
#define HALO_CHECKPOINT_H
#include <stddef.h>
#include <stdint.h>
#include "model/llama.h"
#include "train/adamw.h"
#include "train/trainer.h"

#define CHECKPOINT_FORMAT "halo-checkpoint-1"

typedef struct {
    int64_t step;             // optimizer steps done
    int64_t optim_t;          // AdamW's step counter (equals step for a plain run)
    train_data_state data;
    uint64_t rng;             // trainer RNG state
    double elapsed_s;         // training seconds so far
    char *options_json;       // train_options_to_json(); malloc'ed, may be NULL
    char *app_json;           // caller's JSON (e.g. the demo task); malloc'ed, may be NULL
    char *lora_json;          // LoRA run: the adapters' configuration (lora_config_to_json); NULL for a whole model
} checkpoint_meta;

// opt may be NULL (parameters only; such a file can be exported but not resumed).
int checkpoint_save(const char *path, const llama_model *m, const adamw_state *opt, const checkpoint_meta *meta);
// Reads and checks only the header: the model config and the metadata (so the caller can build the model).
int checkpoint_read_meta(const char *path, llama_config *cfg, checkpoint_meta *meta);
// Loads into a model initialized with the checkpoint's config (and opt initialized for it, or NULL to skip the
// moments). Every expected tensor must be present as F32 with the table's shape; errors name the file and tensor.
int checkpoint_load(const char *path, llama_model *m, adamw_state *opt, checkpoint_meta *meta);
void checkpoint_meta_free(checkpoint_meta *meta);

// DIR/step_00000012.safetensors
void checkpoint_path(char *buf, size_t cap, const char *dir, int64_t step);
// Newest step_*.safetensors in dir (highest step). HALO_ERR naming the folder when there is none.
int checkpoint_find_latest(const char *dir, char *buf, size_t cap);
int64_t checkpoint_latest_step(const char *dir);   // the newest step_*.safetensors step in DIR; -1 when none
// After the checkpoint of step `current` was written: deletes the oldest checkpoints of earlier steps in dir until
// `keep` remain up to and including `current` (keep <= 0: nothing). Later steps (an earlier run's, left by a resume
// from before them) are never deleted, nor is `current`.
void checkpoint_prune(const char *dir, int keep, int64_t current);

#endif
