#!/usr/bin/env bash
# The own INT8 kernel's epilogue addends (the group sum it rounds, an fp32 output it adds into) prefetched into L2
# while the tile's products run (HALO_INT8_RES_PREFETCH=1) against none, with the sum in the epilogue
# (HALO_CUDA_SUM_FUSED) on and off: tests with the prefetch on, then CUPTI kernel times of 1B INT8 L0 steps
# (dev/cuda/probe/halo_step_kernels.sh), alternating; INT8 L1 pairs last. Results go to $OUT/summary.txt as they finish.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/res_prefetch_ab.sh
# Run 28 (forty-fourth session) measured it slower and dropped it; apply dev/cuda/prep/14_int8_res_prefetch.patch
# before scripts/device_sync.sh to rerun it. Since run 32 the group sums are rounded only with HALO_CUDA_DNORM_F32=0.
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
export HALO_CUDA_DNORM_F32=0
for t in halo halo_train; do HALO_INT8_RES_PREFETCH=1 ab_test $t 200; done
C="gemm_s8=k_gemm_s8_dq round=k_f32_to_bf16"
kt() { local n=$1 sum=$2 pf=$3; shift 3; HALO_CUDA_SUM_FUSED=$sum HALO_INT8_RES_PREFETCH=$pf ab_kt $n "$C" "$@"; }
I0="--precision int8 --halo-level 0"
for r in 1 2; do
  kt i0_sum1_pf1_$r 1 1 $I0; kt i0_sum1_pf0_$r 1 0 $I0; kt i0_sum0_pf1_$r 0 1 $I0; kt i0_sum0_pf0_$r 0 0 $I0
done
I1="--precision int8 --halo-level 1 --halo-hadamard-block 256"
kt i1_sum1_pf1_1 1 1 $I1; kt i1_sum1_pf0_1 1 0 $I1
ab_end
