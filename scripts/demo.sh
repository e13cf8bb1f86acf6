#!/usr/bin/env bash
# The main job on the embedded default: precompute the babyweight example into SQLite, serve it, look a
# key up, then stop the server. Run from the repository root after `make install` (`make demo` does both).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CONFIG=examples/babyweight/precompute.toml

# PORT picks the API's port. Unset: 8000, or a free port when 8000 is taken. Set and taken: stop and say so,
# rather than read another server's answers as ours.
port_free() { "$BIN/python" -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
if [ -z "${PORT:-}" ]; then
    PORT=8000
    if ! port_free "$PORT"; then
        PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        echo "demo: port 8000 is taken; serving on $PORT instead (set PORT to choose)"
    fi
elif ! port_free "$PORT"; then
    echo "demo: port $PORT is taken by another program; choose another, e.g. PORT=8081 make demo" >&2
    exit 1
fi

"$BIN/precompute" run --config "$CONFIG"
"$BIN/precompute" versions --config "$CONFIG"

"$BIN/precompute" serve --config "$CONFIG" --port "$PORT" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
ready=""
for _ in $(seq 100); do
    if ! kill -0 "$server" 2>/dev/null; then
        echo "demo: the API stopped before it was ready (see its error above)" >&2
        exit 1
    fi
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && { ready=1; break; }
    sleep 0.2
done
if [ -z "$ready" ]; then
    echo "demo: the API on port $PORT did not become ready within 20 s" >&2
    exit 1
fi

echo
echo "\$ curl http://127.0.0.1:$PORT/predict/True:25:Single(1):39"
curl -s "http://127.0.0.1:$PORT/predict/True:25:Single(1):39"
echo
echo "\$ curl 'http://127.0.0.1:$PORT/predict?is_male=False&mother_age=31.6&plurality=Twins(2)&gestation_weeks=35'"
curl -s "http://127.0.0.1:$PORT/predict?is_male=False&mother_age=31.6&plurality=Twins(2)&gestation_weeks=35"
echo
