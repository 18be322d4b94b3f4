#!/usr/bin/env bash
# Delayed scaling's W codes written by AdamW (halo_cuda_linear_w_codes; HALO_CUDA_W_CODES=1: the update writes the
# row-major codes and each forward transposes them; run 30 measured an older form, both layouts by tiles) and o_proj's
# X amax from the attention forward (HALO_ATTN_AMAX=0 switches it off): the test binaries that check them
# (test_cuda_halo_train: test_model_w_codes, test_model_attention_amax, test_model_delayed; test_cuda_ops: the
# update's codes, the attention's amax), with the GPU quality run of the delayed option beside them (ViGGO, one
# epoch, bench/quality_viggo_epoch.sh: BF16 and INT8 L0 / FP8 L0 / INT8 L2 with and without the option, seeds 1-3;
# QSEEDS / QPRECS change them, QUALITY=0 skips it), then CUPTI kernel times of 1B steps
# (dev/cuda/probe/halo_step_kernels.sh): INT8 L0 delayed with W codes off / on (ROUNDS="1 2": twice, alternating),
# BF16, INT8 L0 spec, FP8 L0 delayed; test_cuda_halo last (the most important first: a short device call keeps them).
# ONLY_TRAIN=1: test_cuda_halo_train alone. Results go to $OUT/summary.txt as they finish.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/w_codes_ab.sh
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
if [ "${QUALITY:-1}" = 1 ]; then
  HALO_BIN=build-dev/halo EXTRA='--device cuda' timeout 420 bash bench/quality_viggo_epoch.sh $OUT/t/q "${QSEEDS:-1 2 3}" \
    "${QPRECS:-bf16 int8-L0 int8-L0-dly fp8-L0 fp8-L0-dly int8-L2 int8-L2-dly}" > $OUT/t/quality.txt 2>&1 & qpid=$!
fi
tst halo_train; [ "${ONLY_TRAIN:-0}" = 1 ] && { cat $S; exit 0; }
tst ops
grep -h -E "codes|W codes|delayed|with amax|attention amax" $OUT/t/ops.log $OUT/t/halo_train.log | grep -v 'SwiGLU\|RoPE\|norm' | head -50 >> $S
if [ -n "${qpid:-}" ]; then wait $qpid; echo "quality rc=$?" >> $S; cat $OUT/t/quality.txt >> $S; fi
kt() {   # name delayed w_codes attn_amax [bench options]
  local n=$1 d=$2 w=$3 a=$4; shift 4
  HALO_DELAYED_SCALING=$d HALO_CUDA_W_CODES=$w HALO_ATTN_AMAX=$a bash dev/cuda/probe/halo_step_kernels.sh $OUT/t $n --model llama3.2-1b "$@" > $OUT/t/$n.txt
  echo "$n $(head -1 $OUT/t/$n.txt | grep -o '"step_ms": [0-9.]*') adamw $(grep -E 'k_adamw_seg' $OUT/t/$n.txt | awk '{s+=$1} END {print s}') tile8 $(grep -E 'k_tile8' $OUT/t/$n.txt | awk '{s+=$1} END {print s}') absmax $(grep -E "k_absmax_vec" $OUT/t/$n.txt | awk "{s+=\$1} END {print s}") all $(grep -E "all kernels" $OUT/t/$n.txt | awk -F"|" '{print $3}')" >> $S
}
I0="--precision int8 --halo-level 0"
for r in ${ROUNDS:-1}; do kt i0_d1w0_$r 1 0 0 $I0; kt i0_d1w1_$r 1 1 0 $I0; done
kt bf16 0 0 0
kt i0_spec 0 0 0 $I0
kt f0_d1w1 1 1 0 --precision fp8 --halo-level 0
tst halo
cat $S
rm -f $OUT/t/kt.so; cd $OUT && tar cJf logs.tar.xz t && rm -rf t
