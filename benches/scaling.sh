#!/usr/bin/env bash
# Cost per unit as the work grows: how sluice's RSS and CPU grow with idle connections,
# subscriptions in the trie, and fan-out. Loopback only, every run bounded; a fresh broker
# (release build, pinned to CPU 0; the load tool on CPU 1) for every step.
#
#   benches/scaling.sh [--duration SECS] [--out DIR] [--no-pin] [--quick]
#
#   connections  1k, 5k, 10k, 15k idle (conns scenario): connects/s, broker RSS per
#                connection, broker CPU per connection (connect + CONNACK + close)
#   subscriptions 10k, 100k, 1M exact filters over 100 clients (subs scenario): broker RSS
#                and CPU per subscription, then broker CPU per QoS 0 publish that matches
#                one of them (trie match + one delivery)
#   fan-out      1 -> 10, 100, 1000 subscribers, QoS 0 and 1 (fanout scenario): deliveries/s
#                and broker CPU per delivery
#
# --quick stops at 10k connections and 100k subscriptions. The open-file limit bounds the
# connection steps: each needs that many fds in the broker and in the tool (a step over
# the hard limit is skipped with a note). Prints a Markdown table; per-run JSON goes to
# DIR/scaling.jsonl. Needs cargo, jq, taskset.
set -euo pipefail

DURATION=3
OUT=""
PIN=1
QUICK=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --quick) QUICK=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "scaling.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$DURATION" =~ ^[1-9][0-9]*$ && "$DURATION" -le 60 ]] || { echo "--duration must be 1..60" >&2; exit 2; }
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }
cd "$(dirname "$0")/.."

ON_CPU0=()
ON_CPU1=()
if [[ $PIN == 1 ]] && command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    ON_CPU0=(taskset -c 0)
    ON_CPU1=(taskset -c 1)
fi

cargo build --release --quiet
LOAD=$(cargo bench --bench load --no-run --message-format=json --quiet |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "load" and .executable != null) | .executable' |
    tail -n1)
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
SLUICE=$TARGET_DIR/release/sluice
[[ -x "$LOAD" && -x "$SLUICE" ]] || { echo "build failed" >&2; exit 1; }

WORK=$(mktemp -d /tmp/sluice-scaling.XXXXXX)
[[ -n "$OUT" ]] || OUT=$WORK/out
mkdir -p "$OUT"
RESULTS=$OUT/scaling.jsonl
: >"$RESULTS"
BROKER_PID=""
cleanup() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK/run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

NEXT_PORT=$((20000 + RANDOM % 10000))
free_port() {
    local p=$NEXT_PORT
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    NEXT_PORT=$((p + 1))
    PORT=$p
}

start_broker() { # sets BROKER_PID and PORT
    local dir=$WORK/run i
    rm -rf "$dir"
    mkdir -p "$dir/data"
    free_port
    cat >"$dir/sluice.toml" <<EOF
[limits]
max_queued_messages = 100000
max_subscriptions_per_client = 100000
max_connections = 100000
EOF
    RUST_LOG=warn "${ON_CPU0[@]}" "$SLUICE" --config "$dir/sluice.toml" --listen "127.0.0.1:$PORT" \
        --metrics-listen 127.0.0.1:0 --data-dir "$dir/data" >"$dir/stdout" 2>>"$OUT/sluice.log" &
    BROKER_PID=$!
    for i in $(seq 1 200); do
        grep -q '^sluice ready' "$dir/stdout" 2>/dev/null && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "sluice did not become ready; see $OUT/sluice.log" >&2
    return 1
}

stop_broker() {
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

run() { # run SCENARIO ARGS...: one fresh broker, one load run; appends the JSON line
    start_broker
    "${ON_CPU1[@]}" "$LOAD" "$@" --duration "$DURATION" --host 127.0.0.1 --port "$PORT" \
        --broker-pid "$BROKER_PID" --label sluice | tail -n1 | tee -a "$RESULTS" >&2
    stop_broker
}

CONNS=(1000 5000 10000 15000)
SUBS=(10000 100000 1000000)
if [[ $QUICK == 1 ]]; then
    CONNS=(1000 5000 10000)
    SUBS=(10000 100000)
fi
for c in "${CONNS[@]}"; do
    if ((c + 100 > NOFILE)); then
        echo "note: $c connections skipped: open-file limit is $NOFILE" >&2
        continue
    fi
    run conns --connections "$c"
done
for s in "${SUBS[@]}"; do
    run subs --subscriptions "$s" --subscribers 100
done
for q in 0 1; do
    for n in 10 100 1000; do
        run fanout --qos "$q" --subscribers "$n"
    done
done

echo
echo "sluice $(git rev-parse --short HEAD 2>/dev/null || echo '?'), ${DURATION}s runs, broker pinned: $([[ ${#ON_CPU0[@]} -gt 0 ]] && echo yes || echo no)"
echo
jq -rs '
  def r0: if . == null then "-" else (. | round | tostring) end;
  def r2: if . == null then "-" else ((. * 100 | round) / 100 | tostring) end;
  (["| work | size | throughput | broker RSS per unit | broker CPU per unit |",
    "|---|---|---|---|---|"] | .[]),
  (.[] | select(.scenario == "conns") |
    "| idle connections | \(.connected) | \(.connects_per_sec | r0) connects/s | \(.rss_per_conn_bytes / 1024 | r2) KB | \((.broker_cpu_s | tonumber) * 1e6 / .connected | r0) µs (connect, idle, close) |"),
  (.[] | select(.scenario == "subs") |
    "| subscriptions (exact filters, 100 clients) | \(.subscribed) | \(.subscribes_per_sec | r0) subscribes/s | \(.rss_per_sub_bytes | r0) B | \(.broker_cpu_us_per_sub | r2) µs to subscribe; \(.broker_cpu_us_per_publish | r2) µs per matching QoS 0 publish |"),
  (.[] | select(.scenario == "fanout") |
    "| fan-out QoS \(.qos), 1 → N | \(.subscribers) | \(.msgs_per_sec | r0) deliveries/s | - | \((.broker_cpu_s | tonumber) * 1e6 / .received | r2) µs per delivery |")
' "$RESULTS"
if jq -e 'select(.errors > 0)' "$RESULTS" >/dev/null; then
    echo "some runs had errors: see $RESULTS" >&2
fi
