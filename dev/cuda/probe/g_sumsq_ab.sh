#!/usr/bin/env bash
# Three INT8 step changes of the fifty-third session, each off by default until this probe has run:
#   HALO_G_SUMSQ=1             the gradient norm's squares of the HALO weight gradients summed in the own INT8 kernel's
#                              G epilogue; the norm's pass reads only the rest (llama_cuda_g_sumsq)
#   HALO_CUDA_PDL=1            programmatic dependent launch of the own product and the tile quantizer
#   HALO_CUDA_EX_SWIGLU_AMAX=1 gate's and up's E_Y amax taken by down's input-gradient product, not a pass of its own
# test_cuda_halo_train and test_cuda_halo with PDL on (the new tests turn their switches on themselves),
# bench_cuda_int8's epilogue table (the own kernel with its stores cut), then CUPTI times of 1B INT8 L0 steps in three
# rounds of: all off / sums / sums + PDL / all three; INT8 L1 H_m blocks of 256 all off / all on.
# Here:   make the dev build, then bash scripts/device_sync.sh
# Device: cd .dev-cuda && bash dev/cuda/probe/g_sumsq_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
HALO_CUDA_PDL=1 ab_test halo_train 300
HALO_CUDA_PDL=1 ab_test halo 240
timeout 150 build-dev/bench/bench_cuda_int8 --reps 20 > $OUT/int8.md 2>&1
sed -n '/stores cut/,$p' $OUT/int8.md >> $S
C="s8_gemm=k_gemm_s8 sumsq=k_sumsq swiglu_bwd=k_swiglu_bwd"
for r in 1 2 3; do
  ab_kt int8_off_$r "$C" --precision int8 --halo-level 0
  HALO_G_SUMSQ=1 ab_kt int8_ss_$r "$C" --precision int8 --halo-level 0
  HALO_G_SUMSQ=1 HALO_CUDA_PDL=1 ab_kt int8_sspdl_$r "$C" --precision int8 --halo-level 0
  HALO_G_SUMSQ=1 HALO_CUDA_PDL=1 HALO_CUDA_EX_SWIGLU_AMAX=1 ab_kt int8_all_$r "$C" --precision int8 --halo-level 0
done
H="--precision int8 --halo-level 1 --halo-hadamard-block 256"
ab_kt int8l1_off "$C" $H
HALO_G_SUMSQ=1 HALO_CUDA_PDL=1 HALO_CUDA_EX_SWIGLU_AMAX=1 ab_kt int8l1_all "$C" $H
ab_end
