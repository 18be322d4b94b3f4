#!/usr/bin/env bash
# The gradient norm from the HALO weight gradients' own products (llama_cuda_g_sumsq: the own INT8 kernel's G epilogue
# sums the squares it writes; the norm's pass reads only the rest; HALO_G_SUMSQ=1, off by default): test_cuda_halo
# (test_gemm_s8_dq_sumsq), test_cuda_halo_train (test_model_g_sumsq), bench_cuda_int8's epilogue table (the own kernel
# with its stores cut), then CUPTI times of 1B steps at INT8 L0 in three rounds of: both off / the fused sums / those
# and programmatic dependent launch (HALO_CUDA_PDL=1, off by default: the own product and the tile quantizer), and INT8
# L1 H_m blocks of 256 both off / both on. The tests run with PDL on (test_model_g_sumsq turns the sums on itself).
# Here:   make the dev build, then bash scripts/device_sync.sh
# Device: cd .dev-cuda && bash dev/cuda/probe/g_sumsq_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
HALO_CUDA_PDL=1 ab_test halo_train 300
HALO_CUDA_PDL=1 ab_test halo 240
timeout 150 build-dev/bench/bench_cuda_int8 --reps 20 > $OUT/int8.md 2>&1
sed -n '/stores cut/,$p' $OUT/int8.md >> $S
C="s8_gemm=k_gemm_s8 sumsq=k_sumsq adamw=k_adamw"
for r in 1 2 3; do
  ab_kt int8_off_$r "$C" --precision int8 --halo-level 0
  HALO_G_SUMSQ=1 ab_kt int8_ss_$r "$C" --precision int8 --halo-level 0
  HALO_G_SUMSQ=1 HALO_CUDA_PDL=1 ab_kt int8_sspdl_$r "$C" --precision int8 --halo-level 0
done
H="--precision int8 --halo-level 1 --halo-hadamard-block 256"
ab_kt int8l1_off "$C" $H
HALO_G_SUMSQ=1 HALO_CUDA_PDL=1 ab_kt int8l1_sspdl "$C" $H
ab_end
