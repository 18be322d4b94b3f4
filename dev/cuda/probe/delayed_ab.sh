#!/usr/bin/env bash
# Delayed scaling (HALO_DELAYED_SCALING=1: the SwiGLU kernels write down_proj's X codes and gate's and up's E_Y codes
# with the previous call's scale) against the spec's current scaling: the two test binaries (their delayed checks:
# test_swiglu_codes, test_model_delayed), then CUPTI kernel times of 1B steps (dev/cuda/probe/halo_step_kernels.sh),
# alternating off / on; BF16 once for the ratio. Results go to $OUT/summary.txt as they finish.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/delayed_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
for t in halo halo_train; do ab_test $t 240; done
grep -h -E "SwiGLU (bwd|fwd) codes|delayed" $OUT/t/halo.log $OUT/t/halo_train.log | head -40 >> $S
C="swiglu=k_swiglu tile8=k_tile8"
kt() { local n=$1 d=$2; shift 2; HALO_DELAYED_SCALING=$d ab_kt $n "$C" "$@"; }
kt bf16 0
I0="--precision int8 --halo-level 0"
for r in 1 2; do kt i0_d0_$r 0 $I0; kt i0_d1_$r 1 $I0; done
F0="--precision fp8 --halo-level 0"
kt f0_d0 0 $F0; kt f0_d1 1 $F0
I1="--precision int8 --halo-level 1 --halo-hadamard-block 256"
kt i1_d0 0 $I1; kt i1_d1 1 $I1
ab_end
