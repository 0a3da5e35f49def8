#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 20) and prints how many inputs each ran.
#   fuzz/run.sh 600           # ten minutes each
# Stable Rust: cargo-fuzz needs nightly flags, which RUSTC_BOOTSTRAP=1 allows.
# Needs cargo-fuzz (cargo install cargo-fuzz --locked). A failing target stops the run, with
# the crashing input under fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
export RUSTC_BOOTSTRAP=1
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^portcullis-fuzz$')
cargo fuzz build --release
for target in $targets; do
  mkdir -p "fuzz/corpus/$target"
  log=$(mktemp)
  if ! cargo fuzz run --release "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" \
      -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $target FAILED"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "fuzz: $target: ${runs:-?} inputs in ${seconds}s, ${cov:-cov: ?}, corpus $(ls "fuzz/corpus/$target" | wc -l)"
  rm -f "$log"
done
