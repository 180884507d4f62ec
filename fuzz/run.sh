#!/usr/bin/env bash
# A short fuzzing pass of every target (CI runs it; `SECONDS_EACH=600 fuzz/run.sh` for longer).
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer); the machine has one stable
# toolchain, so RUSTC_BOOTSTRAP=1 unlocks them for this build only.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
SECONDS_EACH=${SECONDS_EACH:-45}
cargo fuzz build -O
for t in value_decode segment_open ring_messages record_decode; do
    corpus=$(mktemp -d)
    seeds=seeds/$t
    [ -d "$seeds" ] || seeds=
    echo "fuzz: $t for ${SECONDS_EACH}s"
    log=$(mktemp)
    if ! cargo fuzz run -O "$t" "$corpus" $seeds -- -max_total_time="$SECONDS_EACH" \
            -print_final_stats=1 >"$log" 2>&1; then
        tail -60 "$log"
        echo "fuzz: $t found a crash (input saved under fuzz/artifacts/$t/)"
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units)" "$log"
    rm -rf "$corpus" "$log"
done
