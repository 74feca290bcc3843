#!/usr/bin/env bash
# Cluster scaling benchmark: sluice on 1, 2 and 3 nodes over a NATS cluster vs one sluice
# with the cluster disabled, on 127.0.0.1 only. Bounded in time, stops by itself, kills what
# it started and removes its scratch dir on exit.
#
#   benches/cluster.sh [options]
#
# Options:
#   --nodes LIST        sluice node counts to run, comma separated (default 1,2,3)
#   --no-single         skip the single-node baseline (cluster disabled)
#   --nats N            NATS servers: 3 (a cluster, JetStream replicas 3; default) or 1 (one
#                       standalone server, replicas 1)
#   --duration SECS     publishing time per run (default 4)
#   --rounds R          rounds of alternation single,1,2,3,single,... (default 2)
#   --publishers P      fan-in publishers (default 10)
#   --subscribers S     fan-out subscribers, spread round-robin over the nodes (default 30)
#   --rate MSGS         latency runs: QoS 1 publishes per second (default 2000)
#   --payload BYTES     payload size (default 64)
#   --out DIR           results.jsonl, table.md and logs go there
#                       (default target/cluster-bench/DATE-TIME)
#   --no-pin            do not pin (default: NATS and sluice on CPU 0, load tool on CPU 1)
#   --max-total SECS    start no further run past this much wall time (default 840)
#
# Cases, each run against a fresh set of processes per round and configuration (NATS store
# and sluice data dirs are new for each):
#   fanin_q0, fanin_q1  P publishers on node 1 -> one sensors/+/temp subscriber (clean
#                       session) on the LAST node
#   persist_q1          the same at QoS 1 to a persistent subscriber (clean session 0) on the
#                       last node: with 2+ nodes each PUBACK waits for JetStream to take the
#                       message into that node's durable inbox
#   fanout_q0, fanout_q1  1 publisher on node 1 -> S subscribers spread over all nodes
#   latency_cross       QoS 1 at --rate from node 1 to a subscriber on the last node
#   latency_same        the same with the subscriber on node 1 (only with 2+ nodes; with one
#                       node latency_cross is already same-node)
#   latency_persist     1 publisher at --rate (QoS 1) to a persistent subscriber on the last
#                       node: the JetStream inbox path at a fixed rate, not saturated
# With one node the "last node" is node 1: cluster-1 measures what cluster mode costs without
# a hop. The single baseline runs the same cases on one sluice with [cluster] off.
#
# Pinned (default), everything server-side shares CPU 0 and the load tool has CPU 1: msg/s
# is then a measure of the total server CPU a message costs, and more nodes cannot add
# throughput on this machine. servers_cpu_s (NATS + sluice, from /proc) is added to every
# JSON line. Needs: cargo, jq, taskset, timeout, nats-server (Debian package nats-server).
set -euo pipefail

NODES_LIST=1,2,3
SINGLE=1
NATS_N=3
DURATION=4
ROUNDS=2
PUBLISHERS=10
SUBSCRIBERS=30
RATE=2000
PAYLOAD=64
OUT=""
PIN=1
MAX_TOTAL=840
DRAIN=5

die() {
    echo "cluster.sh: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    --nodes) NODES_LIST="$2"; shift 2 ;;
    --no-single) SINGLE=0; shift ;;
    --nats) NATS_N="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --publishers) PUBLISHERS="$2"; shift 2 ;;
    --subscribers) SUBSCRIBERS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --payload) PAYLOAD="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --max-total) MAX_TOTAL="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
for v in DURATION ROUNDS PUBLISHERS SUBSCRIBERS RATE PAYLOAD MAX_TOTAL; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v,,} must be a positive integer"
done
[[ $DURATION -le 60 ]] || die "--duration must be at most 60"
[[ $NATS_N == 1 || $NATS_N == 3 ]] || die "--nats must be 1 or 3"
REPLICAS=$NATS_N
IFS=, read -r -a NODE_COUNTS <<<"$NODES_LIST"
for n in "${NODE_COUNTS[@]}"; do [[ $n =~ ^[123]$ ]] || die "--nodes: $n is not 1, 2 or 3"; done

for c in cargo jq timeout nats-server; do
    command -v "$c" >/dev/null || die "needs $c"
done
cd "$(dirname "$0")/.."

if [[ $PIN == 1 ]]; then
    if ! command -v taskset >/dev/null || [[ $(nproc) -lt 2 ]]; then
        echo "note: taskset missing or fewer than 2 CPUs: not pinning" >&2
        PIN=0
    fi
fi
# Expanded in place (not functions), so that `$! ` is the pid of the server itself.
ON_SERVERS=()
ON_TOOL=()
if [[ $PIN == 1 ]]; then
    ON_SERVERS=(taskset -c 0)
    ON_TOOL=(taskset -c 1)
fi

# --- build (honours CARGO_TARGET_DIR) -----------------------------------------------------------
artifact() { # artifact NAME: the executable cargo reports for target NAME on stdin
    jq -r --arg n "$1" 'select(.reason == "compiler-artifact" and .target.name == $n
        and .executable != null) | .executable' | tail -n1
}
SLUICE=$(cargo build --release --bin sluice --message-format=json --quiet | artifact sluice)
[[ -x "$SLUICE" ]] || die "could not build sluice (cargo build --release)"
LOAD=$(cargo bench --bench load --no-run --message-format=json --quiet | artifact load)
[[ -x "$LOAD" ]] || die "could not build the load tool (cargo bench --bench load --no-run)"

# --- scratch space, cleanup ----------------------------------------------------------------------
WORK=$(mktemp -d /tmp/sluice-cluster.XXXXXX)
[[ -n "$OUT" ]] || OUT=target/cluster-bench/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
PIDS=()     # every server this script started and has not stopped yet
LOAD_PID=""

stop_pids() { # TERM, up to 5 s, then KILL
    local p i
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for i in $(seq 1 100); do
        local alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 1 ]] || break
        sleep 0.05
    done
    for p in "$@"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
cleanup() {
    if [[ -n "$LOAD_PID" ]]; then
        kill -TERM "$LOAD_PID" 2>/dev/null || true
        wait "$LOAD_PID" 2>/dev/null || true
    fi
    [[ ${#PIDS[@]} -eq 0 ]] || stop_pids "${PIDS[@]}"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port below the ephemeral range (where a client socket may hold a port unbound).
NEXT_PORT=$((20000 + RANDOM % 10000))
free_port() {
    local p=$NEXT_PORT
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    NEXT_PORT=$((p + 1))
    PORT=$p
}

wait_log() { # wait_log FILE NEEDLE SECS PID: until FILE contains NEEDLE while PID lives
    local i
    for i in $(seq 1 $(($3 * 20))); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# --- NATS ----------------------------------------------------------------------------------------
NATS_PIDS=()
NATS_URLS=""
start_nats() { # start_nats TAG
    local tag=$1 i j dir=$WORK/nats
    rm -rf "$dir"
    mkdir -p "$dir"
    local cports=() rports=()
    for i in $(seq 1 "$NATS_N"); do
        free_port; cports+=("$PORT")
        free_port; rports+=("$PORT")
    done
    NATS_PIDS=()
    local urls=()
    for i in $(seq 0 $((NATS_N - 1))); do
        {
            echo "server_name: nats$i"
            echo "listen: 127.0.0.1:${cports[$i]}"
            echo "jetstream { store_dir: \"$dir/js$i\" }"
            if [[ $NATS_N -gt 1 ]]; then
                local routes=()
                for j in $(seq 0 $((NATS_N - 1))); do
                    [[ $j == "$i" ]] || routes+=("\"nats-route://127.0.0.1:${rports[$j]}\"")
                done
                echo "cluster { name: sluice-bench, listen: 127.0.0.1:${rports[$i]}, routes: [$(
                    IFS=,
                    echo "${routes[*]}"
                )] }"
            fi
        } >"$dir/n$i.conf"
        "${ON_SERVERS[@]}" nats-server -c "$dir/n$i.conf" </dev/null >/dev/null \
            2>"$OUT/logs/$tag-nats$i.log" &
        NATS_PIDS+=($!)
        PIDS+=($!)
        urls+=("\"nats://127.0.0.1:${cports[$i]}\"")
    done
    NATS_URLS="[$(
        IFS=,
        echo "${urls[*]}"
    )]"
    # A cluster elects a JetStream metadata leader; a standalone server just gets ready.
    local needle="metadata leader"
    [[ $NATS_N -gt 1 ]] || needle="Server is ready"
    local k
    for k in $(seq 1 600); do
        for i in $(seq 0 $((NATS_N - 1))); do
            grep -q "$needle" "$OUT/logs/$tag-nats$i.log" 2>/dev/null && return 0
        done
        sleep 0.05
    done
    echo "NATS: \"$needle\" not logged within 30 s; see $OUT/logs/$tag-nats*.log" >&2
    return 1
}

# --- sluice ----------------------------------------------------------------------------------------
NODE_PIDS=()
NODE_PORTS=()
NODE_METRICS=()
start_node() { # start_node TAG INDEX CLUSTERED(0|1)
    local tag=$1 i=$2 clustered=$3 dir=$WORK/sluice$2
    rm -rf "$dir"
    mkdir -p "$dir/data"
    {
        echo "[limits]"
        echo "max_queued_messages = 100000"
        if [[ $clustered == 1 ]]; then
            echo "[cluster]"
            echo "enabled = true"
            echo "node = \"n$i\""
            echo "nats_urls = $NATS_URLS"
            echo "replicas = $REPLICAS"
            echo "forward_timeout_ms = 10000"
        fi
    } >"$dir/sluice.toml"
    local log=$OUT/logs/$tag-sluice$i.log
    RUST_LOG=warn,sluice::cluster=info "${ON_SERVERS[@]}" "$SLUICE" --config "$dir/sluice.toml" \
        --listen 127.0.0.1:0 --data-dir "$dir/data" --metrics-listen 127.0.0.1:0 \
        </dev/null >"$dir/stdout" 2>"$log" &
    local pid=$!
    PIDS+=("$pid")
    NODE_PIDS+=("$pid")
    wait_log "$dir/stdout" '^sluice ready' 30 "$pid" || {
        echo "sluice n$i did not become ready; see $log" >&2
        return 1
    }
    local port
    port=$(sed -n '1s/.* mqtt=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/stdout")
    [[ -n "$port" ]] || { echo "sluice n$i: no mqtt address in: $(head -n1 "$dir/stdout")" >&2; return 1; }
    NODE_PORTS+=("$port")
    NODE_METRICS+=("$(sed -n '1s/.* metrics=\([0-9.:]*\).*/\1/p' "$dir/stdout")")
    if [[ $clustered == 1 ]]; then
        wait_log "$log" 'cluster ready' 30 "$pid" || {
            echo "sluice n$i: no \"cluster ready\" within 30 s; see $log" >&2
            return 1
        }
    fi
}

stop_all() {
    [[ ${#PIDS[@]} -eq 0 ]] || stop_pids "${PIDS[@]}"
    PIDS=()
    NATS_PIDS=()
    NODE_PIDS=()
    NODE_PORTS=()
    NODE_METRICS=()
}

# start_config CONFIG TAG: CONFIG is "single" (cluster off) or "cluster-N"; TAG names the logs
start_config() {
    local config=$1 tag=$2 i
    stop_all
    if [[ $config == single ]]; then
        start_node "$tag" 1 0
    else
        start_nats "$tag" || return 1
        for i in $(seq 1 "${config#cluster-}"); do start_node "$tag" "$i" 1 || return 1; done
    fi
}

servers_cpu() { # CPU seconds (user + system) of every running server, from /proc/PID/stat
    local p
    for p in "${PIDS[@]}"; do sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true; done |
        awk -v hz="$(getconf CLK_TCK)" '{ t += $12 + $13 } END { printf "%.3f\n", t / hz }'
}

# Cluster counters of every node as one JSON object ({"forwarded_queue": N, ...}), summed over
# nodes: what went over NATS core and through the JetStream inboxes, and what failed.
cluster_counters() {
    local m
    for m in "${NODE_METRICS[@]}"; do
        curl -s --max-time 2 "http://$m/metrics" 2>/dev/null || true
    done | awk '
        /^sluice_cluster_(forwarded|received|forward_failures)_total\{/ {
            name = $1; sub(/^sluice_cluster_/, "", name); sub(/_total\{path="/, "_", name)
            sub(/".*/, "", name); v[name] += $NF
        }
        END { printf "{"; sep = ""; for (k in v) { printf "%s\"%s\":%d", sep, k, v[k]; sep = "," }
              print "}" }'
}

# run_case CONFIG ROUND CASE
run_case() {
    local config=$1 round=$2 case=$3 nodes=${#NODE_PORTS[@]}
    local first=${NODE_PORTS[0]} last=${NODE_PORTS[$((nodes - 1))]}
    local args=() sub_node=$nodes
    case "$case" in
    fanin_q0) args=(fanin --qos 0 --publishers "$PUBLISHERS" --sub-port "$last") ;;
    fanin_q1) args=(fanin --qos 1 --publishers "$PUBLISHERS" --sub-port "$last") ;;
    persist_q1) args=(persist --publishers "$PUBLISHERS" --sub-port "$last") ;;
    fanout_q0 | fanout_q1)
        args=(fanout --qos "${case#fanout_q}" --subscribers "$SUBSCRIBERS"
            --sub-ports "$(IFS=,; echo "${NODE_PORTS[*]}")")
        sub_node=all ;;
    latency_cross) args=(latency --qos 1 --rate "$RATE" --sub-port "$last") ;;
    latency_same) args=(latency --qos 1 --rate "$RATE" --sub-port "$first"); sub_node=1 ;;
    latency_persist) args=(persist --publishers 1 --rate "$RATE" --sub-port "$last") ;;
    esac
    local cpu0 cpu1 line c0 c1
    cpu0=$(servers_cpu)
    c0=$(cluster_counters)
    timeout -k 5 $((DURATION + DRAIN + 60)) "${ON_TOOL[@]}" "$LOAD" "${args[@]}" \
        --duration "$DURATION" --drain "$DRAIN" --payload "$PAYLOAD" --host 127.0.0.1 \
        --port "$first" --broker-pid "${NODE_PIDS[0]}" --label "$config" \
        >"$WORK/line" 2>>"$OUT/logs/load.stderr" &
    LOAD_PID=$!
    wait "$LOAD_PID" || true
    LOAD_PID=""
    cpu1=$(servers_cpu)
    c1=$(cluster_counters)
    line=$(tail -n1 "$WORK/line")
    if [[ -z "$line" ]] || ! jq -e . >/dev/null 2>&1 <<<"$line"; then
        line=$(jq -nc '{errors:1, error_samples:["load tool failed: see logs/load.stderr"]}')
    fi
    jq -c --arg c "$config" --arg k "$case" --argjson r "$round" --argjson n "$nodes" \
        --arg s "$sub_node" --argjson nats "$([[ $config == single ]] && echo 0 || echo "$NATS_N")" \
        --argjson c0 "$c0" --argjson c1 "$c1" \
        --argjson cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.3f", b - a }')" \
        '. + {config:$c, case:$k, round:$r, nodes:$n, sub_node:$s, nats_servers:$nats,
              servers_cpu_s:$cpu,
              cluster: ($c1 | with_entries(.value -= ($c0[.key] // 0)))}' <<<"$line" | tee -a "$RESULTS"
}

# --- the runs --------------------------------------------------------------------------------------
CONFIGS=()
[[ $SINGLE == 0 ]] || CONFIGS+=(single)
for n in "${NODE_COUNTS[@]}"; do CONFIGS+=("cluster-$n"); done
echo "# configs: ${CONFIGS[*]}; NATS: $NATS_N server(s), JetStream replicas $REPLICAS; rounds: $ROUNDS;" \
    "duration: ${DURATION}s; payload: ${PAYLOAD}B; fan-in publishers: $PUBLISHERS;" \
    "fan-out subscribers: $SUBSCRIBERS; latency rate: $RATE/s;" \
    "pinned: $([[ $PIN == 1 ]] && echo 'servers CPU 0, tool CPU 1' || echo no); out: $OUT" >&2
SKIPPED=0
for round in $(seq 1 "$ROUNDS"); do
    for config in "${CONFIGS[@]}"; do
        if [[ $SECONDS -ge $MAX_TOTAL ]]; then SKIPPED=1; break 2; fi
        if ! start_config "$config" "$config-r$round"; then
            jq -nc --arg c "$config" --argjson r "$round" \
                '{config:$c, round:$r, errors:1, error_samples:["servers did not start"]}' |
                tee -a "$RESULTS"
            continue
        fi
        cases=(fanin_q0 fanin_q1 persist_q1 fanout_q0 fanout_q1 latency_cross)
        [[ ${#NODE_PORTS[@]} -lt 2 ]] || cases+=(latency_same)
        cases+=(latency_persist)
        for case in "${cases[@]}"; do
            if [[ $SECONDS -ge $MAX_TOTAL ]]; then SKIPPED=1; break 3; fi
            run_case "$config" "$round" "$case"
        done
        # Errors the nodes logged during the runs (warn and above), for the report.
        for f in "$OUT/logs/$config-r$round"-sluice*.log; do
            c=$(grep -c ' ERROR \| WARN ' "$f" || true)
            [[ $c == 0 ]] || echo "# $(basename "$f"): $c warning/error lines" >&2
        done
    done
done
stop_all

# --- the table: medians over rounds -----------------------------------------------------------------
{
    echo
    echo "Medians over $ROUNDS round(s), ${DURATION}s each; msg/s = deliveries per second in the"
    echo "publishing window; vs single = msg/s / single-node msg/s; CPU µs/msg = NATS + sluice CPU per"
    echo "delivered message; lost = QoS 1 expected - received (summed over rounds); via JS = messages"
    echo "the nodes put into a JetStream inbox (the PUBACK-gating path); NATS fail = failed forwards;"
    echo "srv CPU % = NATS + sluice CPU over the run: pinned to one CPU, well under 100 means the"
    echo "servers were not CPU-bound (or other processes on that CPU took it): read msg/s with it."
    echo
    jq -rs '
      def median: sort | if length == 0 then null
          elif length % 2 == 1 then .[(length - 1) / 2]
          else (.[length / 2 - 1] + .[length / 2]) / 2 end;
      def fmt: if . == null then "-" elif . >= 100 then (. | round | tostring)
          else ((. * 100 | round) / 100 | tostring) end;
      [ .[] | select(.case != null) ] as $runs
      | ([$runs[].config] | unique) as $cfgs
      | ["single", "cluster-1", "cluster-2", "cluster-3"] as $order
      | ([$runs[].case] | unique) as $cases
      | ["fanin_q0", "fanin_q1", "persist_q1", "fanout_q0", "fanout_q1", "latency_cross",
         "latency_same", "latency_persist"] as $corder
      | "| case | config | msg/s | vs single | p50 µs | p99 µs | CPU µs/msg | srv CPU % | sent | acked | received | lost | via JS | NATS fail | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ( $corder[] as $k | select($cases | index($k))
          | ([$runs[] | select(.case == $k and .config == "single") | .msgs_per_sec] | median) as $base
          | $order[] as $c | select($cfgs | index($c))
          | [$runs[] | select(.case == $k and .config == $c)] as $rs
          | select($rs | length > 0)
          | ([$rs[].msgs_per_sec | select(. != null)] | median) as $m
          | "| \($k) | \($c) | \($m | fmt) | \(if $base == null or $base == 0 or $m == null then "-"
                else ($m / $base * 100 | round) / 100 | tostring end)"
            + " | \([$rs[].latency_us.p50 | select(. != null)] | median | fmt)"
            + " | \([$rs[].latency_us.p99 | select(. != null)] | median | fmt)"
            + " | \([$rs[] | select(.received > 0) | .servers_cpu_s * 1e6 / .received] | median | fmt)"
            + " | \([$rs[] | select(.elapsed_s > 0) | .servers_cpu_s * 100 / .elapsed_s] | median | fmt)"
            + " | \([$rs[].sent // 0] | add) | \(if $rs[0].qos == 1 then ([$rs[].acked // 0] | add) else "-" end)"
            + " | \([$rs[].received // 0] | add)"
            + " | \(if $rs[0].qos == 1 then ([$rs[] | ((.expected // 0) - (.received // 0)) | if . > 0 then . else 0 end] | add) else "-" end)"
            + " | \(if $c == "single" then "-" else [$rs[].cluster.forwarded_queue // 0] | add end)"
            + " | \(if $c == "single" then "-" else [$rs[].cluster | to_entries[]
                   | select(.key | startswith("forward_failures")) | .value] | add // 0 end)"
            + " | \([$rs[].errors // 0] | add) |" )
    ' "$RESULTS"
    echo
    jq -rs '
      def median: sort | if length == 0 then null
          elif length % 2 == 1 then .[(length - 1) / 2]
          else (.[length / 2 - 1] + .[length / 2]) / 2 end;
      def r1: (. * 10 | round) / 10 | if . >= 0 then "+\(.)" else tostring end;
      [ .[] | select(.case != null) ] as $runs
      | ["cluster-2", "cluster-3"][] as $c
      | [$runs[] | select(.config == $c and .case == "latency_cross") | .latency_us] as $x
      | [$runs[] | select(.config == $c and .case == "latency_same") | .latency_us] as $s
      | select(($x | length) > 0 and ($s | length) > 0)
      | "NATS hop (\($c), QoS 1): p50 \(([$x[].p50] | median) - ([$s[].p50] | median) | r1) µs,"
        + " p99 \(([$x[].p99] | median) - ([$s[].p99] | median) | r1) µs (cross-node minus same-node)",
        ( [$runs[] | select(.config == "cluster-1" and .case == "latency_persist") | .latency_us] as $one
          | [$runs[] | select(.config == $c and .case == "latency_persist") | .latency_us] as $p
          | select(($one | length) > 0 and ($p | length) > 0)
          | "JetStream hop (\($c), QoS 1 to a persistent subscriber): p50"
            + " \(([$p[].p50] | median) - ([$one[].p50] | median) | r1) µs,"
            + " p99 \(([$p[].p99] | median) - ([$one[].p99] | median) | r1) µs (minus cluster-1, same node)" )
    ' "$RESULTS"
} | tee "$OUT/table.md"
echo
echo "per-run JSON: $RESULTS; logs: $OUT/logs"
[[ $SKIPPED == 0 ]] || echo "warning: stopped early at --max-total ${MAX_TOTAL}s; some runs were not made" >&2
if jq -e 'select((.errors // 0) > 0)' "$RESULTS" >/dev/null; then
    echo "some runs reported errors: see error_samples in $RESULTS and $OUT/logs" >&2
fi
if jq -e 'select(.tool_saturated == true)' "$RESULTS" >/dev/null; then
    echo "note: the load tool used ~a full core in some runs (tool_saturated)" >&2
fi
exit 0
