#!/usr/bin/env bash
# Runs every fuzz target for N seconds each on the stable toolchain (see README.md).
#
#   fuzz/run.sh [SECONDS]          # default 60 s per target
#   FUZZ_TARGETS="decap lease_parse" fuzz/run.sh 30
#
# Environment:
#   FUZZ_TARGETS    targets to run (default: all, from `cargo fuzz list`)
#   FUZZ_SANITIZER  cargo-fuzz --sanitizer (default address; `none` runs about twice as fast)
#   FUZZ_WORK       working corpus root (default fuzz/corpus-run, ignored by git); new inputs
#                   go there, the committed seeds in fuzz/corpus/<target> are only read
#
# Each target first replays its committed regressions (fuzz/regressions/<target>/*), then fuzzes
# from the seeds plus the working corpus (also when a regression failed). Prints one line per target with libFuzzer's totals.
# Exit status 1 if any target crashed, timed out or failed to build; crash inputs are left in
# fuzz/artifacts/<target>/.
set -uo pipefail

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here" || exit 2

# cargo-fuzz passes -Z flags (-Zsanitizer=address); the machines have only stable Rust, and
# RUSTC_BOOTSTRAP=1 lets stable rustc accept them.
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"
sanitizer="${FUZZ_SANITIZER:-address}"
work="${FUZZ_WORK:-$here/corpus-run}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 1
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"

echo "run.sh: building ($(cargo fuzz --version), sanitizer $sanitizer)" >&2
if ! cargo fuzz build --sanitizer "$sanitizer"; then
    echo "run.sh: build failed" >&2
    exit 1
fi

logs="$work/logs"
mkdir -p "$logs"
failed=()
summary=()
for t in $targets; do
    mkdir -p "$work/$t"
    log="$logs/$t.log"

    # 1. Committed regressions: every input must now pass. A failure is reported, and the target
    #    is still fuzzed so that one known bug does not hide others.
    regfail=""
    regs=()
    if [ -d "regressions/$t" ]; then
        while IFS= read -r -d '' f; do regs+=("$f"); done \
            < <(find "regressions/$t" -type f ! -name '*.md' -print0 | sort -z)
    fi
    if [ "${#regs[@]}" -gt 0 ]; then
        if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "${regs[@]}" >"$logs/$t.regressions.log" 2>&1; then
            echo "run.sh: $t: a regression input fails again, see $logs/$t.regressions.log" >&2
            grep -m1 -E "panicked at|ERROR: libFuzzer" "$logs/$t.regressions.log" >&2
            regfail="  REGRESSION FAILED"
        fi
    fi

    # 2. Fuzz for $secs seconds from the committed seeds plus the working corpus.
    cargo fuzz run --sanitizer "$sanitizer" "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?

    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    # libFuzzer's last status line: "#<execs> <event> cov: .. ft: .. corp: <units>/<bytes> ..."
    last="$(grep -E '^#[0-9]+' "$log" | tail -1)"
    corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    [ -n "$execs" ] || execs="$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$last")"
    line="$(printf '%-16s execs %-10s exec/s %-7s corpus %-12s cov %s' \
        "$t" "${execs:-?}" "${rate:-?}" "${corp:-?}" "${cov:-?}")"
    line="$line$regfail"
    if [ "$rc" -ne 0 ]; then
        line="$line  CRASH (exit $rc)"
        echo "run.sh: $t crashed; log $log" >&2
        grep -m3 -E "panicked at|ERROR: libFuzzer|Test unit written to" "$log" >&2
    fi
    if [ "$rc" -ne 0 ] || [ -n "$regfail" ]; then
        failed+=("$t")
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "=== fuzz summary (${secs}s per target, sanitizer $sanitizer) ==="
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]} (inputs in $here/artifacts/<target>/, logs in $logs)"
    exit 1
fi
echo "all targets passed"
