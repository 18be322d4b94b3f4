#!/usr/bin/env bash
# One device call for the prepared patches (README.md beside this): the probe, test_cuda_ops and test_cuda_halo_train
# on the patched build, bench_cuda_attention and the 1B BF16 / INT8 L0 / FP8 L0 steps with the old (build-old) and
# patched (build-dev) binaries alternated twice, and patch 5 alone by its switch (HALO_W_AMAX_ADAMW=0). Prepared here: `git apply` the patches, `DEVICE_SYNC_LEAN=1 bash
# scripts/device_sync.sh`, the previous commit's bench_cuda_attention and bench_cuda_train packed as
# .dev-cuda/build-old.tar.xz, the probe binary as .dev-cuda/attn_probe, this script copied into .dev-cuda; then
# device run with carry [".dev-cuda"]: bash .dev-cuda/run_attn_ab.sh
set -u
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64 HALO_SHARED=$PWD/shared
tar xJf build-dev.tar.xz; tar xJf build-old.tar.xz
L=/tmp/l; mkdir -p $L
./attn_probe > $L/probe.txt 2>&1
timeout 120 build-dev/tests/test_cuda_ops > $L/ops.log 2>&1; echo "ops rc=$?" >> $L/summary.txt
HALO_ATTN_TMA=0 HALO_ATTN_DQ_TILES=0 timeout 120 build-dev/tests/test_cuda_ops > $L/ops_off.log 2>&1; echo "ops (TMA, dQ tiles off) rc=$?" >> $L/summary.txt
timeout 200 build-dev/tests/test_cuda_halo_train > $L/halo_train.log 2>&1; echo "halo_train rc=$?" >> $L/summary.txt
grep -E "passed, .* failed|FAIL" $L/ops.log $L/ops_off.log $L/halo_train.log | head -20 >> $L/summary.txt
# the patched binary with its switches: patch 1 alone (both off), 1+2 (tiles), 1+3 (TMA), all
for r in 1 2; do
  timeout 60 build-old/bench/bench_cuda_attention --hd 64 > $L/att_old_$r.log 2>&1
  for tma in 0 1; do for dqt in 0 1; do
    HALO_ATTN_TMA=$tma HALO_ATTN_DQ_TILES=$dqt timeout 60 build-dev/bench/bench_cuda_attention --hd 64 > $L/att_tma${tma}_dqt${dqt}_$r.log 2>&1
  done; done
done
timeout 60 build-old/bench/bench_cuda_attention --hd 128 > $L/att128_old.log 2>&1
timeout 60 build-dev/bench/bench_cuda_attention --hd 128 > $L/att128_dev.log 2>&1
for r in 1 2; do
  for v in old dev; do
    timeout 90 build-$v/bench/bench_cuda_train --batch 4 --seq 2048 --steps 5 --model llama3.2-1b --no-breakdown > $L/b1_${v}_$r.log 2>&1
    timeout 90 build-$v/bench/bench_cuda_train --batch 4 --seq 2048 --steps 5 --model llama3.2-1b --precision int8 --halo-level 0 --no-breakdown > $L/b1i0_${v}_$r.log 2>&1
  done
  for wa in 0 1; do   # patch 5 by its switch, INT8 and FP8 level 0
    HALO_W_AMAX_ADAMW=$wa timeout 90 build-dev/bench/bench_cuda_train --batch 4 --seq 2048 --steps 5 --model llama3.2-1b --precision int8 --halo-level 0 --no-breakdown > $L/b1i0_wa${wa}_$r.log 2>&1
    HALO_W_AMAX_ADAMW=$wa timeout 90 build-dev/bench/bench_cuda_train --batch 4 --seq 2048 --steps 5 --model llama3.2-1b --precision fp8 --halo-level 0 --no-breakdown > $L/b1f0_wa${wa}_$r.log 2>&1
  done
done
{ cat $L/probe.txt | tail -20
  for f in $L/att_*.log $L/att128_*.log; do echo "== $f"; grep -E "^\| hd.*\| 4 \||^\| hd.*fwd \| 2" $f; done
  for f in $L/b1*.log; do echo "$f $(grep -h '^step' $f)"; done; } >> $L/summary.txt
cat $L/summary.txt
cd $L && tar czf $OUT/logs_a.tar.gz . && cp summary.txt $OUT/
