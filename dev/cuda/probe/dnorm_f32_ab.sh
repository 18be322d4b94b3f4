#!/usr/bin/env bash
# The norm backward reading a HALO group's fp32 sum of input gradients (g->dnorm32: no rounding pass, no rounding
# epilogue; HALO_CUDA_DNORM_F32=0 switches it off): the tests that check it (test_cuda_ops: the fp32-dout RMSNorm
# backward rows; test_cuda_halo_train: the model against the CPU, and test_model_w_codes's gradient row fixed after
# run 31), then CUPTI kernel times of 1B steps (dev/cuda/probe/halo_step_kernels.sh), off / on alternating
# (ROUNDS="1 2"), for INT8 L0 and FP8 L0 as the spec scales, then BF16 and both delayed; test_cuda_halo last.
# Results go to $OUT/summary.txt as they finish (NOTES run 32).
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/dnorm_f32_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
ab_test ops
grep -h "fp32 dout" $OUT/t/ops.log >> $S
ab_test halo_train
grep -h -E "W codes: grads|GPU vs CPU|stories" $OUT/t/halo_train.log | head -20 >> $S
C="round=k_f32_to_bf16 norm_bwd=k_rmsnorm_bwd s8_gemm=k_gemm_s8"
I0="--precision int8 --halo-level 0"; F0="--precision fp8 --halo-level 0"
for r in ${ROUNDS:-1 2}; do
  HALO_CUDA_DNORM_F32=0 ab_kt i0_off_$r "$C" $I0; HALO_CUDA_DNORM_F32=1 ab_kt i0_on_$r "$C" $I0
  HALO_CUDA_DNORM_F32=0 ab_kt f0_off_$r "$C" $F0; HALO_CUDA_DNORM_F32=1 ab_kt f0_on_$r "$C" $F0
done
ab_kt bf16 "$C"
HALO_DELAYED_SCALING=1 ab_kt i0_dly_on "$C" $I0
HALO_DELAYED_SCALING=1 ab_kt f0_dly_on "$C" $F0
ab_test halo
ab_end
