// Data parallel with sharded optimizer state (ZeRO-1), internal to the trainer: every trainable tensor is cut into
// `world` row ranges (halo_shard_range over its rows); a rank keeps AdamW moments for its rows only, updates them,
// and the ranks all-gather the updated rows; HALO weights optionally as their 8-bit codes (the products use nothing
// else), the fp32 rows then gathered only where a whole weight is read (evaluation, checkpoint, telemetry, export). Checkpoints hold the whole moments (gathered before saving; a resume
// keeps each rank's rows), so they equal an unsharded run's.
#ifndef HALO_TRAINER_DIST_H
#define HALO_TRAINER_DIST_H
#include "train/trainer.h"

typedef struct train_shard train_shard;

// Builds the row ranges of t->model's trainable tensors for t->comm and replaces t->opt by moments of this rank's rows;
// with d->gather_8bit, finds the INT8/FP8 HALO layers whose weights are then exchanged as their 8-bit operands.
int dist_shard_init(trainer *t, const train_dist_options *d);
void dist_shard_free(trainer *t);   // also hands the HALO layers back their own quantization of W
// The HALO layers quantize their fp32 weights again (codes handed by 8-bit gathers dropped); after loading weights.
void dist_drop_codes(trainer *t);
// 1 when t->shard exchanges HALO weights as 8-bit codes (train_dist_options.gather_8bit), else 0.
int dist_shard_gathers_8bit(const trainer *t);
// AdamW on this rank's rows, then every rank gets every tensor's updated rows: in fp32, or for HALO weights gathered in
// 8 bits, as the layer's weight operand (its fp32 rows of other ranks are then out of date until dist_sync_weights).
int dist_optimizer_step(trainer *t, double lr);
// The fp32 rows of the HALO weights gathered in 8 bits brought up to date (collective; nothing when they are).
int dist_sync_weights(trainer *t);
// full = the whole moments (collective: every rank calls it); full is initialised here, adamw_free it after.
int dist_gather_moments(trainer *t, adamw_state *full);
// Keeps this rank's rows of the whole moments `full` (what a checkpoint holds) in t->opt.
void dist_take_moments(trainer *t, const adamw_state *full);
#endif
