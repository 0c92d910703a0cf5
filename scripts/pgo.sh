#!/usr/bin/env bash
# scripts/pgo.sh — a profile-guided (PGO) release build of tessera for this
# machine's target: an instrumented build, a training run of it
# (scripts/pgo-train.py: handshakes, rejected upgrades, a fan-out, logins,
# with JSON and text logs, history in memory and on disk), then the release
# build again with the recorded profile. The result spends about 5 % less
# server CPU per handshake than `cargo build --release` (BENCHMARKS.md,
# "Twelfth pass"); it is the same code, only laid out and inlined by
# measured use. Needs rustup's llvm-tools component (installed here when
# missing) and python3. Takes about as long as two release builds.
#
#   scripts/pgo.sh                      # -> target/pgo/tessera
#   FEATURES=tls scripts/pgo.sh         # same features in all three steps
#   PGO_DIR=/tmp/pgo scripts/pgo.sh     # work and output directory
#
# Builds with an explicit --target (the host's) so that the profiling flags
# reach tessera and its dependencies but not build scripts or proc macros,
# which would otherwise write profiles of their own while they run. Only the
# host target: the training run has to execute the instrumented binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${PGO_DIR:-$ROOT/target/pgo}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
FEATURES=${FEATURES:-}
feature_args=()
[[ -z $FEATURES ]] || feature_args=(--features "$FEATURES")
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x $profdata ]]; then
  rustup component add llvm-tools
fi
[[ -x $profdata ]] || { echo "pgo.sh: no llvm-profdata at $profdata (rustup component add llvm-tools)" >&2; exit 2; }
if [[ -n ${RUSTFLAGS:-} ]]; then
  echo "pgo.sh: RUSTFLAGS is set ($RUSTFLAGS); it is replaced during the build" >&2
fi

echo "== pgo 1/3: instrumented build"
rm -rf "$OUT/profiles"
mkdir -p "$OUT/profiles"
RUSTFLAGS="-Cprofile-generate=$OUT/profiles" \
  cargo build --release --bin tessera --target "$host" --target-dir "$OUT/gen" "${feature_args[@]}"

echo "== pgo 2/3: training run"
python3 scripts/pgo-train.py "$OUT/gen/$host/release/tessera"
shopt -s nullglob
raws=("$OUT"/profiles/*.profraw)
[[ ${#raws[@]} -gt 0 ]] || { echo "pgo.sh: the training run wrote no profile" >&2; exit 1; }
"$profdata" merge -o "$OUT/tessera.profdata" "${raws[@]}"

echo "== pgo 3/3: release build with the profile"
RUSTFLAGS="-Cprofile-use=$OUT/tessera.profdata" \
  cargo build --release --bin tessera --target "$host" --target-dir "$OUT/use" "${feature_args[@]}"
cp "$OUT/use/$host/release/tessera" "$OUT/tessera"
ls -l "$OUT/tessera"
