#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz for a bounded time (FUZZ_SECONDS, 20 s
# by default), starting from the seed corpus in tests/fuzz/corpus/<target>;
# what the fuzzer finds goes to target/fuzz-corpus, never into the repository.
# A crash, or one input taking over 5 s (exponential backtracking was found
# that way), fails the run; cargo fuzz prints the input and how to reproduce it.
#
# Needs cargo-fuzz; libFuzzer's sanitizer flags are nightly-only, so on stable
# RUSTC_BOOTSTRAP=1 unlocks them (the nightly toolchain works too).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
command -v cargo-fuzz >/dev/null || { echo "tests/fuzz.sh: cargo-fuzz is missing: cargo install --locked cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1

mapfile -t targets < <(cargo fuzz list --fuzz-dir tests/fuzz)
((${#targets[@]})) || { echo "tests/fuzz.sh: no fuzz targets found" >&2; exit 1; }
cargo fuzz build --fuzz-dir tests/fuzz -O

printf '%-18s %12s %8s\n' target executions corpus
for target in "${targets[@]}"; do
  work=target/fuzz-corpus/$target
  mkdir -p "$work"
  log=target/fuzz-corpus/$target.log
  if ! cargo fuzz run --fuzz-dir tests/fuzz -O "$target" "$work" "tests/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "tests/fuzz.sh: $target failed (full log: $log)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  printf '%-18s %12s %8s\n' "$target" "${runs:-?}" "$(find "$work" -type f | wc -l)"
done
