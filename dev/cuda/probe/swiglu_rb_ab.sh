#!/usr/bin/env bash
# The SwiGLU backward's codes kernel (delayed scaling) loading one chunk at a time (RB 1: 48 registers, 20 blocks an
# SM, the default) against two (HALO_SWIGLU_CODES_RB=2: 64 registers, 16 blocks): test_cuda_halo (its SwiGLU codes
# rows run the default), then CUPTI times of 1B INT8 L0 delayed steps alternating, BF16 once.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/swiglu_rb_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
tar xJf build-dev.tar.xz
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HALO_SHARED=$PWD/shared BUILD=build-dev
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $S
mkdir -p $OUT/t
timeout 240 build-dev/tests/test_cuda_halo > $OUT/t/halo.log 2>&1
echo "halo rc=$? $(tail -n1 $OUT/t/halo.log)" >> $S; grep -h "FAIL" $OUT/t/halo.log | head -5 >> $S
kt() {   # name rb [bench options]
  local n=$1 rb=$2; shift 2
  HALO_SWIGLU_CODES_RB=$rb bash dev/cuda/probe/halo_step_kernels.sh $OUT/t $n --model llama3.2-1b "$@" > $OUT/t/$n.txt
  echo "$n $(head -1 $OUT/t/$n.txt | grep -o '"step_ms": [0-9.]*') swiglu_bwd_codes $(grep 'k_swiglu_codesILb0' $OUT/t/$n.txt | awk '{print $1}')" >> $S
}
kt bf16 1
D="--precision int8 --halo-level 0 --halo-delayed-scaling"
for r in 1 2; do kt rb1_$r 1 $D; kt rb2_$r 2 $D; done
cat $S
rm -f $OUT/t/kt.so; cd $OUT && tar cJf logs.tar.xz t && rm -rf t
