#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60) with libFuzzer,
# starting from the committed seed corpora in fuzz/corpus/<target>/:
#   bash contrib/fuzz.sh [SECONDS] [TARGET…]
# Needs a nightly toolchain and cargo-fuzz (installed here if missing).
# New inputs libFuzzer finds go to a scratch copy, not into fuzz/corpus; add
# a small interesting one by hand (tests/fuzz_corpus.rs replays them all on
# stable in CI). A crash leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(header chunk name config keyring ctl_request layout grants audit)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    echo "== $t (${secs}s)"
    cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=16384 -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|.*panicked)' || true
    [ ! -d "artifacts/$t" ] || ! ls "artifacts/$t" | grep -q . || { echo "fuzz: $t crashed, see fuzz/artifacts/$t" >&2; exit 1; }
done
echo "fuzz: no crash"
