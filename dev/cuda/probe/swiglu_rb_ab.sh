#!/usr/bin/env bash
# The SwiGLU backward's codes kernel (delayed scaling) loading one chunk at a time (RB 1: 48 registers, 20 blocks an
# SM, the default) against two (HALO_SWIGLU_CODES_RB=2: 64 registers, 16 blocks): test_cuda_halo (its SwiGLU codes
# rows run the default), then CUPTI times of 1B INT8 L0 delayed steps alternating, BF16 once.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/swiglu_rb_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
ab_test halo 240
C="swiglu_bwd_codes=k_swiglu_codesILb0"
ab_kt bf16 "$C"
D="--precision int8 --halo-level 0 --halo-delayed-scaling"
for r in 1 2; do HALO_SWIGLU_CODES_RB=1 ab_kt rb1_$r "$C" $D; HALO_SWIGLU_CODES_RB=2 ab_kt rb2_$r "$C" $D; done
ab_end
