#!/usr/bin/env bash
# Runs each test binary given as an argument from the repository root, sums their "N passed, N failed, N skipped"
# lines and prints the total last. Exit status is non-zero if any test failed or any binary crashed.
set -u
# the CLI's default device is cuda when a GPU is present; the CPU tests that run `halo` without --device mean the CPU
export HALO_DEVICE=${HALO_DEVICE:-cpu}
pass=0; fail=0; skip=0; crashed=()
for t in "$@"; do
  echo "== $t"
  out=$("$t" 2>&1); rc=$?
  echo "$out"
  line=$(echo "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -1)
  if [ -n "$line" ]; then
    p=$(echo "$line" | sed -E 's/.* ([0-9]+) passed.*/\1/'); f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -nE 's/.* ([0-9]+) skipped.*/\1/p')
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + ${s:-0}))
  fi
  if [ $rc -ne 0 ] && { [ -z "$line" ] || [ "${f:-0}" = 0 ]; }; then crashed+=("$t (exit $rc)"); fail=$((fail + 1)); fi
done
[ ${#crashed[@]} -gt 0 ] && printf 'crashed: %s\n' "${crashed[@]}"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
