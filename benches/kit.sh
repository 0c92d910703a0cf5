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

# kit_serve BIN|floor PORT [WRAPPER...]: starts that server on CPU 0,
# listening on 127.0.0.1:PORT (tessera with caps above the load and text
# logs), sets SERVER_PID, and waits until it accepts. A WRAPPER command (e.g.
# `strace -c -f -o FILE`) runs the server; SERVER_PID is then the wrapper's.
# Returns 1 (the server stopped) when it does not within 5 s, 2 when BIN is
# not an executable.
kit_serve() {
  local bin=$1 port=$2
  shift 2
  SERVER_PID=
  if [[ $bin == floor ]]; then
    taskset -c 0 "$@" "$FLOOR" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
  else
    [[ -x $bin ]] || { echo "$bin is not executable (cargo build --release)" >&2; return 2; }
    taskset -c 0 "$@" "$bin" serve --listen "127.0.0.1:$port" --max-connections 20000 \
      --max-sockets-per-address 20000 --log-format text >/dev/null 2>&1 &
  fi
  SERVER_PID=$!
  for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$bin did not come up on port $port" >&2
  kill "$SERVER_PID" 2>/dev/null
  return 1
}
