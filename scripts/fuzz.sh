#!/usr/bin/env bash
# Fuzzes the parsers of outside data with cargo-afl (AFL++), each target for
# a fixed time, from its committed seed corpus (fuzz/corpus/<target>/).
# A benchmark job, not CI: CI only replays the corpus (tests/fuzz_corpus.rs).
#
#   scripts/fuzz.sh [--minutes N] [--jobs J] [--mem MB] [--timeout MS] [--max-seed BYTES] [target...]
#
# Targets: spec ami ari_event webhook (default: all), N minutes each
# (default 10), J at a time (default 2). Every input runs under a memory
# limit (--mem, default 512 MB) and a per-input timeout (--timeout, default
# 1000 ms): a blow-up or a hang is a finding like a crash. Results under
# $CARGO_TARGET_DIR/afl-out/<target>/ (default target/afl-out); a summary
# line per target (execs, paths, coverage, crashes, hangs) at the end.
# AFL++ starts from the seeds under --max-seed bytes (default 16 KiB).
# Needs cargo-afl: `cargo install cargo-afl && cargo afl config --build`.
set -euo pipefail

minutes=10 jobs=2 mem=512 timeout=1000 max_seed=16384
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        --mem) mem="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        --max-seed) max_seed="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(spec ami ari_event webhook)

root="$(cd "$(dirname "$0")/.." && pwd)"
out_root="${CARGO_TARGET_DIR:-$root/target}/afl-out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}/afl"
for t in "${targets[@]}"; do
    [ -d "$root/fuzz/corpus/$t" ] || { echo "no corpus for target $t (fuzz/corpus/$t)" >&2; exit 2; }
done

echo "fuzz: building the targets with AFL++ instrumentation (cargo afl build --release)"
(cd "$root/fuzz" && cargo afl build --release --locked)

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
seconds=$(awk "BEGIN { printf \"%d\", $minutes * 60 }")
run() {
    local t="$1" out="$out_root/$1"
    rm -rf "$out"
    mkdir -p "$out/seeds"
    # AFL++ starts from the seeds up to --max-seed bytes: a 200 KB seed makes
    # every mutation cost milliseconds (the ami run sat on one for minutes).
    # The big ones (giant lines, deep nesting) are replayed by the test suite.
    find "$root/fuzz/corpus/$t" -type f -size -"$max_seed"c -exec cp {} "$out/seeds/" \;
    echo "fuzz: $t for $minutes min, $(ls "$out/seeds" | wc -l) seeds (log: $out/afl.log)"
    cargo afl fuzz -i "$out/seeds" -o "$out" -m "$mem" -t "$timeout" -V "$seconds" \
        "$CARGO_TARGET_DIR/release/$t" >"$out/afl.log" 2>&1 || echo "fuzz: afl-fuzz for $t exited with $? (see $out/afl.log)"
}
pids=()
for t in "${targets[@]}"; do
    run "$t" &
    pids+=($!)
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
done
wait

echo
echo "| target | time | execs | execs/s | paths | edges covered | crashes | hangs |"
echo "|---|---|---|---|---|---|---|---|"
status=0
for t in "${targets[@]}"; do
    stats="$out_root/$t/default/fuzzer_stats"
    if [ ! -f "$stats" ]; then
        echo "| $t | — | no stats: see $out_root/$t/afl.log | | | | | |"
        status=1
        continue
    fi
    get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    echo "| $t | $(( $(get run_time) / 60 )) min | $(get execs_done) | $(get execs_per_sec) | $(get corpus_count) | $(get bitmap_cvg) | $(get saved_crashes) | $(get saved_hangs) |"
    if [ "$(get saved_crashes)" != "0" ] || [ "$(get saved_hangs)" != "0" ]; then
        echo "    findings: $out_root/$t/default/crashes/ $out_root/$t/default/hangs/"
        status=1
    fi
done
exit $status
