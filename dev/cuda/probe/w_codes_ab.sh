#!/usr/bin/env bash
# Delayed scaling's W codes written by AdamW (halo_cuda_linear_w_codes; HALO_CUDA_W_CODES=1: the update writes the
# row-major codes and each forward transposes them; run 30 measured an older form, both layouts by tiles) and o_proj's
# X amax from the attention forward (HALO_ATTN_AMAX=0 switches it off): the test binaries that check them
# (test_cuda_halo_train: test_model_w_codes, test_model_attention_amax, test_model_delayed; test_cuda_ops: the
# update's codes, the attention's amax), with the GPU quality run of the delayed option beside them (ViGGO, one
# epoch, bench/quality_viggo_epoch.sh: BF16 and INT8 L0 / FP8 L0 / INT8 L2 with and without the option, seeds 1-3;
# QSEEDS / QPRECS change them, QUALITY=0 skips it), then CUPTI kernel times of 1B steps
# (dev/cuda/probe/halo_step_kernels.sh): INT8 L0 delayed with W codes off / on (ROUNDS="1 2": twice, alternating),
# BF16, INT8 L0 spec, FP8 L0 delayed; test_cuda_halo last (the most important first: a short device call keeps them).
# ONLY_TRAIN=1: test_cuda_halo_train alone. Results go to $OUT/summary.txt as they finish.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/w_codes_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
if [ "${QUALITY:-1}" = 1 ]; then
  HALO_BIN=build-dev/halo EXTRA='--device cuda' timeout 420 bash bench/quality_viggo_epoch.sh $OUT/t/q "${QSEEDS:-1 2 3}" \
    "${QPRECS:-bf16 int8-L0 int8-L0-dly fp8-L0 fp8-L0-dly int8-L2 int8-L2-dly}" > $OUT/t/quality.txt 2>&1 & qpid=$!
fi
ab_test halo_train; [ "${ONLY_TRAIN:-0}" = 1 ] && { cat $S; exit 0; }
ab_test ops
grep -h -E "codes|W codes|delayed|with amax|attention amax" $OUT/t/ops.log $OUT/t/halo_train.log | grep -v 'SwiGLU\|RoPE\|norm' | head -50 >> $S
if [ -n "${qpid:-}" ]; then wait $qpid; echo "quality rc=$?" >> $S; cat $OUT/t/quality.txt >> $S; fi
C="adamw=k_adamw_seg tile8=k_tile8 absmax=k_absmax_vec"
kt() {   # name delayed w_codes attn_amax [bench options]
  local n=$1 d=$2 w=$3 a=$4; shift 4
  HALO_DELAYED_SCALING=$d HALO_CUDA_W_CODES=$w HALO_ATTN_AMAX=$a ab_kt $n "$C" "$@"
}
I0="--precision int8 --halo-level 0"
for r in ${ROUNDS:-1}; do kt i0_d1w0_$r 1 0 0 $I0; kt i0_d1w1_$r 1 1 0 $I0; done
kt bf16 0 0 0
kt i0_spec 0 0 0 $I0
kt f0_d1w1 1 1 0 --precision fp8 --halo-level 0
ab_test halo
ab_end
