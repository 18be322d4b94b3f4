#!/usr/bin/env bash
# The SwiGLU backward's codes kernel: the parts of its time (dev/cuda/probe/swiglu_codes_parts.c: row-major /
# transposed stores alone, 64- and 128-token tiles, an amax-only pass, the spec's quantizer), test_cuda_halo and
# test_cuda_halo_train, then CUPTI times of 1B steps: INT8 and FP8 L0 with gate's and up's E_Y codes written by the
# SwiGLU backward at the spec's scale off / on (HALO_CUDA_EY_CODES_SPEC), alternating (INT8 three rounds, FP8 two),
# BF16 once, INT8 L0 delayed with 64- / 128-token tiles (HALO_SWIGLU_CODES_TR).
# Here:   bash dev/cuda/probe/swiglu_codes_ab.sh build    (the probe into build/dev-gpu/bench), then
#         bash scripts/device_sync.sh
# Device: cd .dev-cuda && bash dev/cuda/probe/swiglu_codes_ab.sh
if [ "${1:-}" = build ]; then
  cd "$(dirname "$0")/../../.." && make -j8 BUILD=build/dev-gpu NCCL=0 OPT="-O3 -march=x86-64-v3" build/dev-gpu/libhalo.a >/dev/null &&
  cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Wno-unused-parameter -Iinclude -Isrc -DHALO_CUDA=1 -I/usr/local/cuda/include \
     -o build/dev-gpu/bench/bench_cuda_swiglu_parts dev/cuda/probe/swiglu_codes_parts.c build/dev-gpu/libhalo.a \
     -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lcjson -lpcre2-8 -lm -fopenmp -L/usr/local/cuda/lib64 \
     -lcublasLt -lcublas -lcudart -lstdc++
  exit
fi
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
build-dev/bench/bench_cuda_swiglu_parts > $OUT/parts.md 2>&1; cat $OUT/parts.md >> $S
ab_test halo 240
ab_test halo_train 300
C="swiglu_bwd=k_swiglu_(bwd|codes) tile8=k_tile8 s8_gemm=k_gemm_s8"
ab_kt bf16 "$C"
for r in 1 2 3; do
  for p in int8 fp8; do
    [ $p = fp8 ] && [ $r = 3 ] && continue
    HALO_CUDA_EY_CODES_SPEC=0 ab_kt ${p}_off_$r "$C" --precision $p --halo-level 0
    HALO_CUDA_EY_CODES_SPEC=1 ab_kt ${p}_on_$r "$C" --precision $p --halo-level 0
  done
done
D="--precision int8 --halo-level 0 --halo-delayed-scaling"
HALO_SWIGLU_CODES_TR=64 ab_kt delayed_tr64 "$C" $D; HALO_SWIGLU_CODES_TR=128 ab_kt delayed_tr128 "$C" $D
ab_end
