#!/usr/bin/env bash
# Side-by-side load comparison: sluice vs mosquitto 2.0 vs rumqttd 0.20, on 127.0.0.1 only.
#
#   benches/compare.sh [options] [SCENARIO...]     (default: fanin fanout pairs latency conns persist)
#
#   storm (not in the default set): --devices devices with a username and password connect at
#   once, disconnect and connect again, while an unrelated client publishes QoS 1; reports
#   connects/s and that client's PUBACK latency per wave. sluice's password file is written
#   by `sluice passwd` (its default iteration count), mosquitto's by `mosquitto_passwd -U`
#   (its default, 101). rumqttd reads no mosquitto password file and is left out of storm.
#   Neither broker limits the connect rate per address by default, so no limit is lifted.
#
# Options:
#   --rounds R          rounds of A B C alternation (default 3)
#   --qos LIST          QoS levels to run, comma separated (default 1; conns ignores it,
#                       persist is always 1)
#   --duration SECS     publishing time per run (default 10)
#   --payload BYTES     payload size (default 64)
#   --brokers LIST      comma separated subset of sluice,mosquitto,rumqttd (default all)
#   --out DIR           keep per-run JSON lines and broker logs there (default: a temp dir)
#   --devices N         storm: devices, each with its own username (default 1000)
#   --install-rumqttd   `cargo install rumqttd --version 0.20.0` first if it is not on PATH
#   --no-pin            do not pin with taskset (broker on CPU 0, load tool on CPU 1)
#   --ws                also run sluice and mosquitto over WebSocket ("sluice-ws",
#                       "mosquitto-ws": the load tool's --ws, path /mqtt; mosquitto's
#                       `protocol websockets` listener, beside a TCP one since 2.0.11 will
#                       not start with a WebSocket listener alone)
#   -- ARGS...          passed to the load tool as is (e.g. -- --publishers 20 --inflight 50)
#
# Every broker gets a fresh data dir and port for every run and is stopped after it; a trap
# kills anything still running on exit. Needs: cargo, jq, taskset, /usr/sbin/mosquitto
# (Debian package `mosquitto`); rumqttd is skipped with a note when it is not on PATH.
#
# Fairness notes: sluice and mosquitto are both given max_queued_messages 100000, with quiet
# logging (mosquitto: no connection messages; sluice: RUST_LOG=warn; rumqttd: its default
# warn level). mosquitto and rumqttd get the inflight window of 100 the comparison is
# specified with; sluice runs with its shipped defaults (inflight window 1000, metrics
# endpoint on), which is what a user gets. In `persist`, sluice runs with
# [store] durability = "fsync" (PUBACK after fdatasync) while mosquitto's `persistence true`
# only writes its database at autosave/shutdown, so mosquitto does strictly less work there;
# rumqttd has no persistent store and is left out of `persist`.
set -euo pipefail

ROUNDS=3
QOS_LIST=1
DURATION=10
PAYLOAD=64
BROKERS=sluice,mosquitto,rumqttd
OUT=""
INSTALL_RUMQTTD=0
RUMQTTD_SKIPPED=0
PIN=1
DEVICES=1000
WS=0
SCENARIOS=()
EXTRA=()

die() {
    echo "compare.sh: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --qos) QOS_LIST="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --payload) PAYLOAD="$2"; shift 2 ;;
    --brokers) BROKERS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --install-rumqttd) INSTALL_RUMQTTD=1; shift ;;
    --no-pin) PIN=0; shift ;;
    --devices) DEVICES="$2"; shift 2 ;;
    --ws) WS=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    fanin | fanout | pairs | latency | conns | persist | storm) SCENARIOS+=("$1"); shift ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(fanin fanout pairs latency conns persist)
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive integer"
[[ "$DEVICES" =~ ^[1-9][0-9]*$ ]] || die "--devices must be a positive integer"
for a in "${EXTRA[@]}"; do
    case "$a" in --host | --port | --broker-pid | --label | --connections | --password) die "$a is set by compare.sh" ;; esac
done

command -v jq >/dev/null || die "needs jq (apt-get install jq)"
command -v cargo >/dev/null || die "needs cargo"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cd "$(dirname "$0")/.."

if [[ $PIN == 1 ]]; then
    if ! command -v taskset >/dev/null || [[ $(nproc) -lt 2 ]]; then
        echo "note: taskset missing or fewer than 2 CPUs: not pinning" >&2
        PIN=0
    fi
fi
# Command prefixes, expanded in place (not a function: `prefix cmd &` must make $! the pid of
# the broker itself, which taskset execs into, so that it can be measured and killed).
ON_CPU0=()
ON_CPU1=()
if [[ $PIN == 1 ]]; then
    ON_CPU0=(taskset -c 0)
    ON_CPU1=(taskset -c 1)
fi

# --- which brokers ---------------------------------------------------------------------------
declare -A WANT=()
IFS=, read -r -a _b <<<"$BROKERS"
for b in "${_b[@]}"; do
    case "$b" in sluice | mosquitto | rumqttd) WANT[$b]=1 ;; *) die "unknown broker $b" ;; esac
done
if [[ -n ${WANT[mosquitto]:-} && ! -x "$MOSQUITTO" ]]; then
    echo "note: mosquitto not found (apt-get install mosquitto): skipped" >&2
    unset 'WANT[mosquitto]'
fi
if [[ -n ${WANT[rumqttd]:-} ]] && ! command -v rumqttd >/dev/null; then
    if [[ $INSTALL_RUMQTTD == 1 ]]; then
        # Not --locked: its lockfile pins metrics 0.22.1, which current rustc rejects (E0521).
        cargo install rumqttd --version 0.20.0
    fi
    if ! command -v rumqttd >/dev/null; then
        RUMQTTD_SKIPPED=1
        echo "note: rumqttd not on PATH: skipped (install with: cargo install rumqttd --version 0.20.0, or pass --install-rumqttd)" >&2
        unset 'WANT[rumqttd]'
    fi
fi
ORDER=()
for b in sluice mosquitto rumqttd; do
    [[ -n ${WANT[$b]:-} ]] || continue
    ORDER+=("$b")
    [[ $WS == 1 && $b != rumqttd ]] && ORDER+=("$b-ws")
done
[[ ${#ORDER[@]} -gt 0 ]] || die "no broker to run"

# --- build -------------------------------------------------------------------------------------
if [[ -n ${WANT[sluice]:-} ]]; then
    cargo build --release --quiet
fi
LOAD=$(cargo bench --bench load --no-run --message-format=json --quiet |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "load" and .executable != null) | .executable' |
    tail -n1)
[[ -x "$LOAD" ]] || die "could not build the load tool (cargo bench --bench load --no-run)"
# Where cargo put it (CARGO_TARGET_DIR or the config may move it from ./target).
SLUICE=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release/sluice

# --- scratch space, cleanup --------------------------------------------------------------------
WORK=$(mktemp -d /tmp/sluice-compare.XXXXXX)
[[ -n "$OUT" ]] || OUT=$WORK/out
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
BROKER_PID=""
LOAD_PID=""
cleanup() {
    if [[ -n "$LOAD_PID" ]]; then
        kill -TERM "$LOAD_PID" 2>/dev/null || true
        wait "$LOAD_PID" 2>/dev/null || true
    fi
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK/run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Many connections need many fds, for the brokers (started from this shell) and the tool.
STORM_PASSWORD=device-secret
if [[ " ${SCENARIOS[*]} " == *" storm "* ]]; then
    echo "# writing $DEVICES users to each password file (sluice passwd, mosquitto_passwd -U)" >&2
    : >"$WORK/sluice.passwd"
    : >"$WORK/mosquitto.passwd"
    for i in $(seq 0 $((DEVICES - 1))); do
        if [[ -n ${WANT[sluice]:-} ]]; then
            "$SLUICE" passwd "$WORK/sluice.passwd" "dev$i" --password "$STORM_PASSWORD" >/dev/null
        fi
        echo "dev$i:$STORM_PASSWORD" >>"$WORK/mosquitto.passwd"
    done
    if [[ -n ${WANT[mosquitto]:-} ]]; then
        mosquitto_passwd -U "$WORK/mosquitto.passwd"
    fi
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "# open-file limit: $(ulimit -n) (conns needs more than --connections; raise the hard limit if it is lower)" >&2

# A free port: nothing answers on it. Below the ephemeral range (32768+ on Linux), where a
# client socket may hold the port without listening on it.
NEXT_PORT=$((20000 + RANDOM % 10000))
free_port() {
    local p=$NEXT_PORT
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    NEXT_PORT=$((p + 1))
    PORT=$p
}

wait_port() { # wait_port PORT PID: until something accepts on PORT (10 s)
    local i
    for i in $(seq 1 200); do
        kill -0 "$2" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

# start_broker NAME SCENARIO: sets BROKER_PID and PORT, or fails.
start_broker() {
    local name=$1 scenario=$2 dir=$WORK/run
    rm -rf "$dir"
    mkdir -p "$dir/data"
    free_port
    local log=$OUT/$name.log
    case "$name" in
    sluice | sluice-ws)
        local listen=(--listen "127.0.0.1:$PORT")
        if [[ $name == sluice-ws ]]; then
            local ws_port=$PORT
            free_port
            listen=(--listen "127.0.0.1:$PORT" --ws-listen "127.0.0.1:$ws_port")
            PORT=$ws_port
        fi
        cat >"$dir/sluice.toml" <<EOF
[limits]
max_queued_messages = 100000
[store]
durability = "fsync"
EOF
        if [[ $scenario == storm ]]; then
            printf '[auth]\npassword_file = "%s"\n' "$WORK/sluice.passwd" >>"$dir/sluice.toml"
            # The probe publishes QoS 1 to a topic nobody subscribes to: mosquitto drops
            # such a message, sluice would make each a durable no_subscribers dead letter
            # (an fsync per probe message). Off, so both do the same work; with it on the
            # probe's p99 measures the fsync on the saturated core (README, Performance).
            printf '[dead_letter]\nno_subscribers = false\n' >>"$dir/sluice.toml"
        fi
        RUST_LOG=warn "${ON_CPU0[@]}" "$SLUICE" --config "$dir/sluice.toml" "${listen[@]}" \
            --metrics-listen 127.0.0.1:0 \
            --data-dir "$dir/data" >"$dir/stdout" 2>>"$log" &
        BROKER_PID=$!
        local i
        for i in $(seq 1 200); do
            grep -q '^sluice ready' "$dir/stdout" 2>/dev/null && return 0
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.05
        done
        echo "sluice did not become ready; see $log" >&2
        return 1
        ;;
    mosquitto | mosquitto-ws)
        local ws_port=""
        if [[ $name == mosquitto-ws ]]; then
            ws_port=$PORT
            free_port
        fi
        {
            echo "listener $PORT 127.0.0.1"
            if [[ -n $ws_port ]]; then
                echo "listener $ws_port 127.0.0.1"
                echo "protocol websockets"
            fi
            echo "allow_anonymous true"
            echo "max_queued_messages 100000"
            echo "max_inflight_messages 100"
            echo "set_tcp_nodelay true"
            echo "log_dest stderr"
            echo "log_type error"
            echo "log_type warning"
            echo "connection_messages false"
            # Run as root only if we are root; mosquitto would otherwise switch to its own
            # user, which cannot write our data dir.
            [[ $(id -u) == 0 ]] && echo "user root"
            [[ $scenario == storm ]] && echo "password_file $WORK/mosquitto.passwd"
            if [[ $scenario == persist ]]; then
                echo "persistence true"
                echo "persistence_location $dir/data/"
            fi
        } >"$dir/mosquitto.conf"
        "${ON_CPU0[@]}" "$MOSQUITTO" -c "$dir/mosquitto.conf" >>"$log" 2>&1 &
        BROKER_PID=$!
        [[ -z $ws_port ]] || PORT=$ws_port
        ;;
    rumqttd)
        cat >"$dir/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = 65000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 2097152
    max_inflight_count = 100
    dynamic_filters = true

[console]
listen = "127.0.0.1:$((PORT + 1))"
EOF
        NEXT_PORT=$((NEXT_PORT + 1))
        "${ON_CPU0[@]}" rumqttd -q --config "$dir/rumqttd.toml" >>"$log" 2>&1 &
        BROKER_PID=$!
        ;;
    esac
    wait_port "$PORT" "$BROKER_PID" || {
        echo "$name did not start listening; see $log" >&2
        return 1
    }
}

stop_broker() {
    [[ -n "$BROKER_PID" ]] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

run_one() { # run_one BROKER SCENARIO QOS ROUND
    local name=$1 scenario=$2 qos=$3 round=$4 line try started=0
    for try in 1 2 3; do # a port can be taken between the check and the bind
        if start_broker "$name" "$scenario"; then
            started=1
            break
        fi
        stop_broker
    done
    if [[ $started == 0 ]]; then
        jq -nc --arg b "$name" --arg s "$scenario" --argjson q "$qos" --argjson r "$round" \
            '{scenario:$s, broker:$b, qos:$q, round:$r, errors:1, error_samples:["broker did not start"]}' |
            tee -a "$RESULTS"
        return 0
    fi
    local transport=()
    [[ $name == *-ws ]] && transport=(--ws)
    # In the background and waited for, so that a signal reaches the trap at once.
    local storm=()
    [[ $scenario == storm ]] && storm=(--connections "$DEVICES" --password "$STORM_PASSWORD")
    "${ON_CPU1[@]}" "$LOAD" "$scenario" --qos "$qos" --duration "$DURATION" --payload "$PAYLOAD" \
        --host 127.0.0.1 --port "$PORT" --broker-pid "$BROKER_PID" --label "$name" \
        "${storm[@]}" "${transport[@]}" "${EXTRA[@]}" >"$WORK/line" 2>>"$OUT/load.stderr" &
    LOAD_PID=$!
    wait "$LOAD_PID" || true
    LOAD_PID=""
    line=$(tail -n1 "$WORK/line")
    stop_broker
    if [[ -z "$line" ]]; then
        line=$(jq -nc --arg b "$name" --arg s "$scenario" --argjson q "$qos" \
            '{scenario:$s, broker:$b, qos:$q, errors:1, error_samples:["load tool failed: see load.stderr"]}')
    fi
    jq -c --argjson r "$round" '. + {round:$r}' <<<"$line" | tee -a "$RESULTS"
}

# --- the runs: A B C A B C ... -----------------------------------------------------------------
echo "# brokers: ${ORDER[*]}; scenarios: ${SCENARIOS[*]}; qos: $QOS_LIST; rounds: $ROUNDS; duration: ${DURATION}s; payload: ${PAYLOAD}B; pinned: $([[ $PIN == 1 ]] && echo 'broker CPU 0, tool CPU 1' || echo no)" >&2
IFS=, read -r -a QOS_ARR <<<"$QOS_LIST"
for scenario in "${SCENARIOS[@]}"; do
    qs=("${QOS_ARR[@]}")
    [[ $scenario == conns ]] && qs=(0)
    [[ $scenario == persist || $scenario == storm ]] && qs=(1)
    for qos in "${qs[@]}"; do
        for round in $(seq 1 "$ROUNDS"); do
            for name in "${ORDER[@]}"; do
                if [[ ($scenario == persist || $scenario == storm) && $name == rumqttd ]]; then continue; fi
                run_one "$name" "$scenario" "$qos" "$round"
            done
        done
    done
done

# --- summary: medians and ratios ---------------------------------------------------------------
echo
echo "Medians over $ROUNDS round(s); ratio = sluice / other (↑: higher is better, ↓: lower is better);"
echo "ws/tcp = sluice-ws / sluice, sl-ws/mq-ws = sluice-ws / mosquitto-ws (with --ws)."
jq -rs '
  def median: sort | if length == 0 then null
      elif length % 2 == 1 then .[(length - 1) / 2]
      else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def metrics:
      if .scenario == "conns" then
          [["connects/s ↑", .connects_per_sec], ["RSS B/conn ↓", .rss_per_conn_bytes],
           ["errors", .errors]]
      elif .scenario == "storm" then
          [["first wave connects/s ↑", .first_connects_per_sec],
           ["first wave PUBACK p99 ms ↓", .first_puback_p99_ms],
           ["first wave PUBACK max ms ↓", .first_puback_max_ms],
           ["reconnect connects/s ↑", .again_connects_per_sec],
           ["reconnect PUBACK p99 ms ↓", .again_puback_p99_ms],
           ["reconnect PUBACK max ms ↓", .again_puback_max_ms],
           ["errors", .errors]]
      elif .scenario == "latency" then
          [["p50 µs ↓", .latency_us.p50], ["p99 µs ↓", .latency_us.p99],
           ["p99.9 µs ↓", .latency_us.p999], ["max µs ↓", .latency_us.max],
           ["undelivered % ↓", .undelivered_pct], ["errors", .errors]]
      else
          [["msgs/s ↑", .msgs_per_sec], ["p99 µs ↓", .latency_us.p99],
           ["undelivered % ↓", .undelivered_pct], ["broker CPU s", .broker_cpu_s],
           ["tool CPU %", .tool_cpu_pct], ["errors", .errors]]
      end;
  def fmt: if . == null then "-" elif . >= 100 then (. | round | tostring)
      else ((. * 100 | round) / 100 | tostring) end;
  def ratio(a; b): if a == null or b == null or b == 0 then "-"
      else ((a / b * 100 | round) / 100 | tostring) end;
  [ .[] | select(.scenario != null) ] as $runs
  | ($runs | map({scenario, qos}) | unique) as $keys
  | (["scenario", "qos", "metric", "sluice", "mosquitto", "rumqttd", "sl/mosq", "sl/rumq",
      "sluice-ws", "mosquitto-ws", "ws/tcp", "sl-ws/mq-ws"] | @tsv),
    ($keys[] as $k
     | [$runs[] | select(.scenario == $k.scenario and .qos == $k.qos)] as $rs
     | ($rs[0] | metrics | map(.[0])) as $names
     | range(0; $names | length) as $i
     | [ "sluice", "mosquitto", "rumqttd", "sluice-ws", "mosquitto-ws" ] as $bs
     | [ $bs[] as $b | [ $rs[] | select(.broker == $b) | metrics | .[$i][1]
                         | select(. != null) | tonumber ] | median ] as $m
     | [ $k.scenario, ($k.qos | tostring), $names[$i],
         ($m[0] | fmt), ($m[1] | fmt), ($m[2] | fmt),
         (if $names[$i] | test("[↑↓]") then ratio($m[0]; $m[1]) else "-" end),
         (if $names[$i] | test("[↑↓]") then ratio($m[0]; $m[2]) else "-" end),
         ($m[3] | fmt), ($m[4] | fmt),
         (if $names[$i] | test("[↑↓]") then ratio($m[3]; $m[0]) else "-" end),
         (if $names[$i] | test("[↑↓]") then ratio($m[3]; $m[4]) else "-" end) ] | @tsv)
' "$RESULTS" | column -t -s $'\t'
echo
echo "per-run JSON: $RESULTS"
grep -q 'broker did not start\|load tool failed' "$RESULTS" && echo "some runs failed: see $OUT/*.log and $OUT/load.stderr" >&2
if jq -e 'select(.tool_saturated == true)' "$RESULTS" >/dev/null; then
    echo "warning: the load tool used ~a full core in some runs (tool_saturated): those numbers may measure the tool, not the broker (try -- --threads 2 --no-pin)" >&2
fi
[[ $RUMQTTD_SKIPPED == 0 ]] || echo "rumqttd: not run (not on PATH; install with: cargo install rumqttd --version 0.20.0)"
exit 0
