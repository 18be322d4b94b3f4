#!/usr/bin/env bash
# Delayed scaling (HALO_DELAYED_SCALING=1: the SwiGLU kernels write down_proj's X codes and gate's and up's E_Y codes
# with the previous call's scale) against the spec's current scaling: the two test binaries (their delayed checks:
# test_swiglu_codes, test_model_delayed), then CUPTI kernel times of 1B steps (dev/cuda/probe/halo_step_kernels.sh),
# alternating off / on; BF16 once for the ratio. Results go to $OUT/summary.txt as they finish.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/delayed_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
tar xJf build-dev.tar.xz   # always: a warm machine may hold an older build-dev
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HALO_SHARED=$PWD/shared
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $S
mkdir -p $OUT/t
for t in halo halo_train; do
  timeout 240 build-dev/tests/test_cuda_$t > $OUT/t/$t.log 2>&1
  echo "$t rc=$? $(tail -n1 $OUT/t/$t.log)" >> $S; grep -h "FAIL" $OUT/t/$t.log | head -5 >> $S
done
grep -h -E "SwiGLU (bwd|fwd) codes|delayed" $OUT/t/halo.log $OUT/t/halo_train.log | head -40 >> $S
kt() {   # name delayed [bench options]
  local n=$1 d=$2; shift 2
  HALO_DELAYED_SCALING=$d bash dev/cuda/probe/halo_step_kernels.sh $OUT/t $n --model llama3.2-1b "$@" > $OUT/t/$n.txt
  echo "$n $(head -1 $OUT/t/$n.txt | grep -o '"step_ms": [0-9.]*') swiglu $(grep -E 'k_swiglu' $OUT/t/$n.txt | awk '{s+=$1} END {print s}') tile8 $(grep -E 'k_tile8' $OUT/t/$n.txt | awk '{s+=$1} END {print s}')" >> $S
}
kt bf16 0
I0="--precision int8 --halo-level 0"
for r in 1 2; do kt i0_d0_$r 0 $I0; kt i0_d1_$r 1 $I0; done
F0="--precision fp8 --halo-level 0"
kt f0_d0 0 $F0; kt f0_d1 1 $F0
I1="--precision int8 --halo-level 1 --halo-hadamard-block 256"
kt i1_d0 0 $I1; kt i1_d1 1 $I1
cat $S
rm -f $OUT/t/kt.so; cd $OUT && tar cJf logs.tar.xz t && rm -rf t
