#!/usr/bin/env bash
# Builds the release artefacts: static musl binaries for each target, copied
# to dist/ as tessera-VERSION-TARGET[-FEATURES], with their sizes and a
# SHA256SUMS file. Needs only rustup's toolchain (rust-lld links the musl
# targets, see .cargo/config.toml); `FEATURES=tls` also needs a C compiler
# for each target (README "Deploying on a device").
#
#   scripts/build-release.sh                       # edge profile, both targets
#   PROFILE=release scripts/build-release.sh
#   TARGETS=aarch64-unknown-linux-musl FEATURES=tls scripts/build-release.sh
#   FEATURES=dlmalloc scripts/build-release.sh     # CPU-bound devices, see below
#
# Allocator: the musl builds use musl's malloc, which hands a spike's memory
# back at once but costs ~32 % more CPU per handshake than glibc's;
# FEATURES=dlmalloc (pure Rust) is as fast as glibc but keeps a spike's peak
# (README "Deploying on a device", BENCHMARKS.md "Allocators").
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-edge}"
TARGETS="${TARGETS:-aarch64-unknown-linux-musl x86_64-unknown-linux-musl}"
FEATURES="${FEATURES:-}"
DIST="${DIST:-dist}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

feature_args=()
suffix=""
if [ -n "$FEATURES" ]; then
  feature_args=(--features "$FEATURES")
  suffix="-${FEATURES//,/-}"
fi

mkdir -p "$DIST"
built=()
for target in $TARGETS; do
  if command -v rustup >/dev/null 2>&1; then
    rustup target add "$target" >/dev/null
  fi
  echo "== cargo build --profile $PROFILE --target $target ${feature_args[*]}" >&2
  cargo build --locked --profile "$PROFILE" --target "$target" "${feature_args[@]}"
  name="tessera-$version-$target$suffix"
  # The `dev` profile's directory is `debug`.
  dir="$PROFILE"
  [ "$PROFILE" = dev ] && dir=debug
  cp "target/$target/$dir/tessera" "$DIST/$name"
  built+=("$name")
done

cd "$DIST"
sha256sum "${built[@]}" > SHA256SUMS.new
# Keep lines for artefacts built earlier with other settings.
if [ -f SHA256SUMS ]; then
  grep -v -F -f <(printf '  %s\n' "${built[@]}") SHA256SUMS >> SHA256SUMS.new || true
fi
sort -k2 SHA256SUMS.new > SHA256SUMS && rm SHA256SUMS.new
printf '%-50s %10s  %s\n' artefact bytes sha256
for name in "${built[@]}"; do
  printf '%-50s %10s  %s\n' "$name" "$(stat -c %s "$name")" "$(sha256sum "$name" | cut -d' ' -f1)"
done
echo "checksums: $DIST/SHA256SUMS"
