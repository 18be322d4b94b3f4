#!/usr/bin/env bash
# The norm backward reading a HALO group's fp32 sum of input gradients (g->dnorm32: no rounding pass, no rounding
# epilogue; HALO_CUDA_DNORM_F32=0 switches it off): the tests that check it (test_cuda_ops: the fp32-dout RMSNorm
# backward rows; test_cuda_halo_train: the model against the CPU, and test_model_w_codes's gradient row fixed after
# run 31), then CUPTI kernel times of 1B steps (dev/cuda/probe/halo_step_kernels.sh), off / on alternating
# (ROUNDS="1 2"), for INT8 L0 and FP8 L0 as the spec scales, then BF16 and both delayed; test_cuda_halo last.
# Results go to $OUT/summary.txt as they finish.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/dnorm_f32_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
tar xJf build-dev.tar.xz   # always: a warm machine may hold an older build-dev
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HALO_SHARED=$PWD/shared BUILD=build-dev
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $S
mkdir -p $OUT/t
tst() {
  timeout 300 build-dev/tests/test_cuda_$1 > $OUT/t/$1.log 2>&1
  echo "$1 rc=$? $(tail -n1 $OUT/t/$1.log)" >> $S; grep -h "FAIL" $OUT/t/$1.log | head -5 >> $S
}
tst ops
grep -h "fp32 dout" $OUT/t/ops.log >> $S
tst halo_train
grep -h -E "W codes: grads|GPU vs CPU|stories" $OUT/t/halo_train.log | head -20 >> $S
sum() { grep -E "$2" $OUT/t/$1.txt | awk '{s+=$1} END {printf "%.2f", s}'; }
kt() {   # name dnorm_f32 delayed [bench options]
  local n=$1 f=$2 d=$3; shift 3
  HALO_CUDA_DNORM_F32=$f HALO_DELAYED_SCALING=$d bash dev/cuda/probe/halo_step_kernels.sh $OUT/t $n --model llama3.2-1b "$@" > $OUT/t/$n.txt
  echo "$n $(head -1 $OUT/t/$n.txt | grep -o '"step_ms": [0-9.]*') round $(sum $n k_f32_to_bf16) norm_bwd $(sum $n k_rmsnorm_bwd) s8_gemm $(sum $n k_gemm_s8) all $(grep -E "all kernels" $OUT/t/$n.txt | awk -F"|" '{print $3}')" >> $S
}
I0="--precision int8 --halo-level 0"; F0="--precision fp8 --halo-level 0"
for r in ${ROUNDS:-1 2}; do
  kt i0_off_$r 0 0 $I0; kt i0_on_$r 1 0 $I0; kt f0_off_$r 0 0 $F0; kt f0_on_$r 1 0 $F0
done
kt bf16 1 0
kt i0_dly_on 1 1 $I0
kt f0_dly_on 1 1 $F0
tst halo
cat $S
rm -f $OUT/t/kt.so; cd $OUT && tar cJf logs.tar.xz t && rm -rf t
