#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: FUZZ_SECONDS each (default 60), one after
# the other (one core). Works from any directory; for CI: `FUZZ_SECONDS=30 bash fuzz/run.sh`.
#
# Installs cargo-fuzz if missing. cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address), so RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
# Each target starts from its committed seeds (fuzz/seeds/<target>/, copied into the
# untracked fuzz/corpus/<target>/, which keeps what earlier runs found). Exits non-zero
# if any target crashed, after running all of them; the crashing inputs are in
# fuzz/artifacts/<target>/ (reproduce: `cargo fuzz run <target> <file>` in the repo root).
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
TARGETS=(decode topic trie store_segment auth_files cluster_wire proxy_header)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz build --fuzz-dir fuzz

failed=()
summary=()
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    cp -r "fuzz/seeds/$t/." "fuzz/corpus/$t/"
    log="fuzz/artifacts/$t/last-run.log"
    echo "== fuzz $t for ${FUZZ_SECONDS}s"
    status=0
    # The outer timeout is a backstop only: libFuzzer stops itself at max_total_time.
    timeout --kill-after=30 $((FUZZ_SECONDS + 300)) \
        cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "!! $t FAILED (exit $status); last lines of $log:"
        tail -n 40 "$log"
        summary+=("$t: FAILED after $execs executions")
    else
        summary+=("$t: ok, $execs executions in ${FUZZ_SECONDS}s")
    fi
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}"
    exit 1
fi
