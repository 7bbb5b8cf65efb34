#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) with cargo-fuzz on the nightly toolchain:
#   scripts/fuzz.sh                 each target for 20 s (what CI runs)
#   scripts/fuzz.sh --seconds 600   each target for 10 minutes
#   scripts/fuzz.sh --runs 10000000 each target for ten million executions
#   scripts/fuzz.sh --runs 10000000 route_map chunked_body   only these targets
# The committed seeds (fuzz/corpus/TARGET) are copied to target/fuzz-corpus/TARGET first,
# so what the fuzzer finds never pollutes them. A crash fails the run and leaves its input
# in fuzz/artifacts/TARGET; the last line per target gives executions and speed.
set -euo pipefail
cd "$(dirname "$0")/.."

limit=(-max_total_time=20)
targets=()
while (($#)); do
  case "$1" in
    --seconds) limit=(-max_total_time="$2"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
rustup toolchain list | grep -q '^nightly' || {
  echo "the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
}
cd fuzz
((${#targets[@]})) || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build
for target in "${targets[@]}"; do
  work="../target/fuzz-corpus/$target"
  mkdir -p "$work"
  cp -n "corpus/$target"/* "$work"/ 2>/dev/null || true
  echo "== fuzz $target (${limit[*]})"
  log="../target/fuzz-$target.log"
  if ! cargo +nightly fuzz run "$target" "$work" -- "${limit[@]}" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  runs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  speed=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
  echo "$target: $runs executions, $speed per second, no crash"
done
