#!/usr/bin/env bash
# Flake hunter (not run by CI): runs the test suite many times and reports
# every test that ever failed, how often, and its first failure message.
#
#   scripts/flake-hunt.sh [-n N] [--stress] [-- extra cargo test args]
#
#   -n N       runs (default 10)
#   --stress   keep `stress-ng --cpu 2` busy beside the tests (started and
#              stopped by this script, also on Ctrl-C)
#   -- ARGS    passed to `cargo test`; a further `--` passes test filters and
#              harness flags, e.g. `-- --test tests -- calls::`
#
# The tests are built once, then run N times; each run's output is kept in
# $CARGO_TARGET_DIR/flake-hunt/<timestamp>/run-<i>.log (target/ by default).
# Set DATABASE_URL and CI=true so the PostgreSQL and browser tests run
# rather than skip. Exits non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

runs=10
stress=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n)
      [ $# -ge 2 ] || { usage >&2; exit 2; }
      runs="$2"
      shift 2
      ;;
    -n*) runs="${1#-n}"; shift ;;
    --stress) stress=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "flake-hunt: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$runs" in
  '' | *[!0-9]* | 0) echo "flake-hunt: -n needs a positive number, got '$runs'" >&2; exit 2 ;;
esac

# What goes to cargo (before a second --) and what goes to the harness (after).
cargo_args=()
harness_args=()
seen_sep=0
for a in ${extra[@]+"${extra[@]}"}; do
  if [ "$seen_sep" = 0 ] && [ "$a" = "--" ]; then
    seen_sep=1
  elif [ "$seen_sep" = 0 ]; then
    cargo_args+=("$a")
  else
    harness_args+=("$a")
  fi
done

target="${CARGO_TARGET_DIR:-target}"
out="$target/flake-hunt/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

stress_pid=""
stop_stress() {
  if [ -n "$stress_pid" ]; then
    # stress-ng runs in its own process group (setsid): end it and its workers.
    kill -TERM -- "-$stress_pid" 2>/dev/null || kill -TERM "$stress_pid" 2>/dev/null
    wait "$stress_pid" 2>/dev/null
    stress_pid=""
  fi
}

passed=0
failed=0
done_runs=0

summary() {
  echo
  echo "flake hunt: $done_runs of $runs runs done (stress: $([ "$stress" = 1 ] && echo on || echo off)), logs in $out"
  echo "  runs passed: $passed, runs failed: $failed"
  local logs=()
  local i
  for ((i = 1; i <= done_runs; i++)); do logs+=("$out/run-$i.log"); done
  [ ${#logs[@]} -gt 0 ] || return 0
  # Every test that ever failed: how often, and its first failure message
  # (the head of its `---- NAME stdout ----` section in the first run it failed).
  local names
  names=$(grep -h -E '^test .+ \.\.\. FAILED$' "${logs[@]}" | sed -E 's/^test (.+) \.\.\. FAILED$/\1/' | sort | uniq -c | sort -rn)
  if [ -n "$names" ]; then
    echo "  tests that failed:"
    while read -r count name; do
      local first=""
      for log in "${logs[@]}"; do
        if grep -q -F -x "test $name ... FAILED" "$log"; then first="$log"; break; fi
      done
      echo "    ${count}x $name (first in $(basename "$first"))"
      awk -v want="---- $name stdout ----" '
        $0 == want { on = 1; next }
        on && (/^---- .* stdout ----$/ || /^failures:$/ || /^stack backtrace:$/ || /^note: run with/) { exit }
        on && /panicked at/ { msg = 1 }
        on && msg && n < 6 && NF { print "        " $0; n++ }
      ' "$first"
    done <<<"$names"
  fi
  # Runs that failed without a failing test (build error, crash, a hang killed).
  for ((i = 1; i <= done_runs; i++)); do
    local rc
    rc=$(cat "$out/run-$i.rc" 2>/dev/null || echo "?")
    if [ "$rc" != 0 ] && ! grep -q -E '^test .+ \.\.\. FAILED$' "$out/run-$i.log"; then
      echo "  run $i failed (exit $rc) with no failing test; see $out/run-$i.log:"
      grep -v -E '^test .+ \.\.\. ok$' "$out/run-$i.log" | tail -n 5 | sed 's/^/        /'
    fi
  done
}

interrupted() {
  stop_stress
  echo
  echo "flake-hunt: interrupted"
  summary
  exit 130
}
trap interrupted INT TERM
trap stop_stress EXIT

echo "flake-hunt: building the tests once: cargo test --no-run ${cargo_args[*]+${cargo_args[*]}}"
if ! cargo test --no-run ${cargo_args[@]+"${cargo_args[@]}"} >"$out/build.log" 2>&1; then
  cat "$out/build.log" >&2
  echo "flake-hunt: the build failed" >&2
  exit 2
fi

if [ "$stress" = 1 ]; then
  command -v stress-ng >/dev/null || { echo "flake-hunt: --stress needs stress-ng" >&2; exit 2; }
  setsid stress-ng --cpu 2 --quiet >"$out/stress-ng.log" 2>&1 &
  stress_pid=$!
  echo "flake-hunt: stress-ng --cpu 2 running (pid $stress_pid)"
fi

cmd=(cargo test ${cargo_args[@]+"${cargo_args[@]}"})
[ ${#harness_args[@]} -gt 0 ] && cmd+=(-- "${harness_args[@]}")
echo "flake-hunt: $runs runs of: ${cmd[*]}"
for ((i = 1; i <= runs; i++)); do
  start=$(date +%s)
  "${cmd[@]}" >"$out/run-$i.log" 2>&1
  rc=$?
  echo "$rc" >"$out/run-$i.rc"
  done_runs=$i
  took=$(($(date +%s) - start))
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    echo "  run $i/$runs: passed (${took}s)"
  else
    failed=$((failed + 1))
    fails=$(grep -E '^test .+ \.\.\. FAILED$' "$out/run-$i.log" | sed -E 's/^test (.+) \.\.\. FAILED$/\1/' | tr '\n' ' ')
    echo "  run $i/$runs: FAILED (exit $rc, ${took}s) ${fails}"
  fi
done

stop_stress
summary
[ "$failed" = 0 ]
