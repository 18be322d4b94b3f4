#!/usr/bin/env bash
# The own INT8 kernel's epilogue addends (the group sum it rounds, an fp32 output it adds into) prefetched into L2
# while the tile's products run (HALO_INT8_RES_PREFETCH=1) against none, with the sum in the epilogue
# (HALO_CUDA_SUM_FUSED) on and off: tests with the prefetch on, then CUPTI kernel times of 1B INT8 L0 steps
# (dev/cuda/probe/halo_step_kernels.sh), alternating; INT8 L1 pairs last. Results go to $OUT/summary.txt as they finish.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/res_prefetch_ab.sh
# Run 28 (forty-fourth session) measured it slower and dropped it; apply dev/cuda/prep/14_int8_res_prefetch.patch
# before scripts/device_sync.sh to rerun it.
cd "$(dirname "$0")/../../.."   # .dev-cuda
tar xJf build-dev.tar.xz   # always: a warm machine may hold an older build-dev
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HALO_SHARED=$PWD/shared
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $S
mkdir -p $OUT/t
for t in halo halo_train; do
  HALO_INT8_RES_PREFETCH=1 timeout 200 build-dev/tests/test_cuda_$t > $OUT/t/$t.log 2>&1
  echo "$t (prefetch on) rc=$? $(tail -n1 $OUT/t/$t.log)" >> $S; grep -h "FAIL" $OUT/t/$t.log | head -5 >> $S
done
kt() {   # name sum prefetch [bench options]
  local n=$1 sum=$2 pf=$3; shift 3
  HALO_CUDA_SUM_FUSED=$sum HALO_INT8_RES_PREFETCH=$pf bash dev/cuda/probe/halo_step_kernels.sh $OUT/t $n \
    --model llama3.2-1b "$@" > $OUT/t/$n.txt
  echo "$n $(head -1 $OUT/t/$n.txt | grep -o '"step_ms": [0-9.]*') gemm_s8 $(grep k_gemm_s8_dq $OUT/t/$n.txt | awk '{print $1}') round $(grep k_f32_to_bf16 $OUT/t/$n.txt | awk '{print $1}')" >> $S
}
I0="--precision int8 --halo-level 0"
for r in 1 2; do
  kt i0_sum1_pf1_$r 1 1 $I0; kt i0_sum1_pf0_$r 1 0 $I0; kt i0_sum0_pf1_$r 0 1 $I0; kt i0_sum0_pf0_$r 0 0 $I0
done
I1="--precision int8 --halo-level 1 --halo-hadamard-block 256"
kt i1_sum1_pf1_1 1 1 $I1; kt i1_sum1_pf0_1 1 0 $I1
cat $S
rm -f $OUT/t/kt.so; cd $OUT && tar cJf logs.tar.xz t && rm -rf t
