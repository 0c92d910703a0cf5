#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60), one after the
# other, and prints one line per target:
#
#   TARGET  EXECUTIONS  SECONDS  ok | CRASH <artifact>
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]    (no TARGET: all of them)
#
# Targets come from `cargo +nightly fuzz list`, so new ones need no change
# here. Each run starts from fuzz/corpus/<target>/ (read only) plus a scratch
# corpus in fuzz/target/corpus/<target>/ that keeps what earlier runs found;
# the committed seeds are never written to. Extra libFuzzer flags (a
# dictionary, -max_len, -timeout) come from fuzz/options/<target>.flags.
# Logs: fuzz/target/logs/<target>.log. Crash inputs: fuzz/artifacts/<target>/.
# Exit status: 0 when no target crashed, 1 otherwise, 2 on a build failure.
#
# Environment: FUZZ_SANITIZER (default none; `address` for ASan, about 5x
# slower), FUZZ_TOOLCHAIN (default nightly).
set -uo pipefail

secs=${1:-60}
shift || true
case $secs in '' | *[!0-9]*)
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
    ;;
esac
sanitizer=${FUZZ_SANITIZER:-none}
toolchain=${FUZZ_TOOLCHAIN:-nightly}

cd "$(dirname "$0")/.." || exit 2
fuzz() { cargo "+$toolchain" fuzz "$@"; }

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(fuzz list) || true
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "no fuzz targets found (is cargo-fuzz installed? cargo install cargo-fuzz)" >&2
    exit 2
fi

echo "building ${#targets[@]} target(s) (sanitizer: $sanitizer)..." >&2
for t in "${targets[@]}"; do
    if ! fuzz build --sanitizer "$sanitizer" "$t" >&2; then
        echo "build of $t failed" >&2
        exit 2
    fi
done

mkdir -p fuzz/target/logs
status=0
for t in "${targets[@]}"; do
    scratch=fuzz/target/corpus/$t
    mkdir -p "$scratch" "fuzz/corpus/$t"
    flags=()
    if [ -f "fuzz/options/$t.flags" ]; then
        mapfile -t flags < <(grep -Ev '^[[:space:]]*(#|$)' "fuzz/options/$t.flags")
    fi
    log=fuzz/target/logs/$t.log
    start=$(date +%s)
    # New inputs go to the first corpus directory only: the scratch one.
    fuzz run --sanitizer "$sanitizer" "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 "${flags[@]}" >"$log" 2>&1
    rc=$?
    wall=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    # libFuzzer's own fuzzing time when it finished normally, else wall time.
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    artifact=$(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log" | tail -n 1)
    if [ $rc -eq 0 ]; then
        verdict=ok
    else
        verdict="CRASH ${artifact:-(no artifact: see $log)}"
        status=1
    fi
    printf '%-20s %12s execs %6ss  %s\n' "$t" "${execs:-?}" "${took:-$wall}" "$verdict"
done
exit $status
