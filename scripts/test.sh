#!/usr/bin/env bash
# The test command: installs dependencies if missing, builds everything (CUDA code too when nvcc is present:
# compile only on machines without a GPU, where GPU tests skip), runs the CPU suite, then runs it again under
# AddressSanitizer + UndefinedBehaviorSanitizer. Shared data comes from HALO_SHARED (default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export HALO_SHARED="${HALO_SHARED:-$(cd .. && pwd)/shared}"
[ -d "$HALO_SHARED" ] || echo "note: $HALO_SHARED not found; tests that need shared data will skip"
JOBS="${JOBS:-2}"
make -j"$JOBS" all tests benches
make -j"$JOBS" test
echo "== sanitizers (ASan + UBSan)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
# without AVX-512 here, so that a machine with VNNI runs the AVX2 int8 kernel in this pass (src/halo/quant.c)
make -j"$JOBS" SAN=1 EXTRA_CFLAGS="-mno-avx512f" test
