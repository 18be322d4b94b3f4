# Shared by the A/B probes in this folder: source it from a probe that runs on the device in .dev-cuda (after
# scripts/device_sync.sh, carry [".dev-cuda"]); the probe writes under $OUT.
# ab_begin: unpacks the binaries (always: a warm machine may hold an older build-dev), sets the library path,
#   HALO_SHARED, BUILD and PATH, starts $OUT/summary.txt ($S) with the GPU's name and uuid, makes $OUT/t.
# ab_test NAME [SECONDS]: build-dev/tests/test_cuda_NAME (default 300 s) into $OUT/t/NAME.log; its verdict line and
#   first FAIL lines go to the summary. An environment assignment before the call reaches the test.
# ab_kt NAME "LABEL=REGEX ..." [bench_cuda_train options]: CUPTI kernel times of a 1B step, batch 4 x 2048
#   (halo_step_kernels.sh), into $OUT/t/NAME.txt; the summary line gives the step time, the ms a step of the kernels
#   whose names match each REGEX, all kernels, and the GPU's idle time inside the window. Environment assignments before the call reach the benchmark.
# ab_end: prints the summary and packs $OUT/t into $OUT/logs.tar.xz.
ab_begin() {
  tar xJf build-dev.tar.xz
  export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  export HALO_SHARED=$PWD/shared BUILD=build-dev PATH=/usr/local/cuda/bin:$PATH   # BUILD: the verbs tests run build-dev/halo
  S=$OUT/summary.txt
  nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $S
  mkdir -p $OUT/t
}
ab_test() {
  timeout ${2:-300} build-dev/tests/test_cuda_$1 > $OUT/t/$1.log 2>&1
  echo "$1 rc=$? $(tail -n1 $OUT/t/$1.log)" >> $S
  grep -h "FAIL" $OUT/t/$1.log | head -5 >> $S
}
ab_kt() {
  local n=$1 cols=$2 line c; shift 2
  bash dev/cuda/probe/halo_step_kernels.sh $OUT/t $n --model llama3.2-1b "$@" > $OUT/t/$n.txt
  line="$n $(head -1 $OUT/t/$n.txt | grep -o '"step_ms": [0-9.]*')"
  for c in $cols; do
    line="$line ${c%%=*} $(grep -E "${c#*=}" $OUT/t/$n.txt | awk '{s += $1} END {printf "%.2f", s}')"
  done
  echo "$line all $(grep -E 'all kernels' $OUT/t/$n.txt | awk -F'|' '{print $3}') idle $(grep -E 'GPU idle inside' \
    $OUT/t/$n.txt | awk -F'|' '{print $3}')" >> $S
}
ab_end() {
  cat $S
  rm -f $OUT/t/kt.so
  cd $OUT && tar cJf logs.tar.xz t && rm -rf t
}
