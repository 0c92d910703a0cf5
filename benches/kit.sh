# benches/kit.sh — sourced by the bench scripts once they are in the project
# root with ROOT set: the bench kit (copied from ../shared/bench when KIT
# [/tmp/bench] is missing), the paths of its wsload and floor peer, and a
# signing secret for the servers (TESSERA_SECRET, random unless given).
KIT=${KIT:-/tmp/bench}
if [[ ! -d $KIT ]]; then
  cp -r "$ROOT/../shared/bench" "$KIT" && chmod -R u+w "$KIT"
fi
WSLOAD=$KIT/wsload/target/release/wsload
FLOOR=$KIT/peers/floor/target/release/floor-peer
export TESSERA_SECRET=${TESSERA_SECRET:-$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')}

# kit_build wsload|floor: builds that tool of the kit unless it is built.
kit_build() {
  case $1 in
    wsload) [[ -x $WSLOAD ]] || (cd "$KIT/wsload" && cargo build --release --quiet) ;;
    floor) [[ -x $FLOOR ]] || (cd "$KIT/peers/floor" && cargo build --release --quiet) ;;
    *) return 2 ;;
  esac
}
