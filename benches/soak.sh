#!/usr/bin/env bash
# Soak test: a release sluice under bounded churn on loopback, sampled every 5 s.
#
#   benches/soak.sh [--minutes N] [--keep]      (default 10 minutes; stops by itself)
#
# Drives, all at once, until the time is up:
#   - connect/disconnect storms           (load conns, 500 connections a round)
#   - QoS 1 fan-in to a persistent subscriber, accounted (load persist, rate-limited)
#   - QoS 0 pairs and QoS 1 latency runs  (load pairs / latency)
#   - QoS 2 publishes                     (mosquitto_pub -q 2)
#   - takeovers of one persistent client id by two overlapping mosquitto_sub loops,
#     fed by an accounted QoS 1 publisher (every PUBACKed payload must be received by
#     that client id or be in $DLQ at the end)
#   - subscribe/unsubscribe churn with clean and persistent sessions
#   - a slow consumer (bash /dev/tcp: CONNECT + SUBSCRIBE soak/# QoS 1, never reads)
#   - a few clients sending random bytes after a valid CONNECT
#   - TLS publishers (mosquitto_pub --cafile) if certs/make-dev-certs.sh and openssl exist
#   - a dead-letter drainer every 20 s (client id sluice-dlq)
# Samples sluice's RSS, open fds and threads, and from /metrics what the broker says it
# holds (queued/inflight messages, the queue budget in bytes, the dead-letter session's
# depth, live log bytes), into soak.csv; at the end prints start/max/end, a growth check
# after warm-up (mean of the 2nd vs the 4th quarter of the samples), the delivery
# accounting, unexpected ERROR lines, and PASS or FAIL (exit 0 / 1).
set -u

MINUTES=10
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 64 ;;
    esac
done
case "$MINUTES" in '' | *[!0-9]*) echo "soak.sh: --minutes takes a whole number" >&2; exit 64 ;; esac
[ "$MINUTES" -ge 1 ] && [ "$MINUTES" -le 240 ] || { echo "soak.sh: --minutes 1..240" >&2; exit 64; }

cd "$(dirname "$0")/.."
for tool in mosquitto_pub mosquitto_sub; do
    command -v $tool >/dev/null || { echo "soak.sh: $tool not found" >&2; exit 69; }
done

echo "== building (release)"
cargo build --release --bin sluice 2>&1 | tail -1
LOAD=$(cargo bench --bench load --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$LOAD" ] || { echo "soak.sh: could not build the load tool" >&2; exit 70; }
SLUICE=${CARGO_TARGET_DIR:-target}/release/sluice

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-soak.XXXXXX")
STOP="$WORK/stop"
PIDS=()
SLUICE_PID=""
cleanup() {
    touch "$STOP"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    [ -n "$SLUICE_PID" ] && kill "$SLUICE_PID" 2>/dev/null
    wait 2>/dev/null
    if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Small per-session queues so the slow consumer overflows into $DLQ quickly; everything
# else at its default.
cat >"$WORK/sluice.toml" <<EOF
[limits]
max_queued_messages = 2000
max_queued_bytes = 1048576
[metrics]
enabled = true
listen = "127.0.0.1:0"
EOF

TLS_ARGS=()
CAFILE=""
if [ -x certs/make-dev-certs.sh ] && command -v openssl >/dev/null; then
    if certs/make-dev-certs.sh "$WORK/certs" >/dev/null 2>&1; then
        TLS_ARGS=(--tls-listen 127.0.0.1:0 --tls-cert "$WORK/certs/server.pem" --tls-key "$WORK/certs/server.key")
        CAFILE="$WORK/certs/ca.pem"
    fi
fi

# SOAK_WRAPPER runs sluice under a tool, e.g. SOAK_WRAPPER="heaptrack -o $PWD/soak"; the
# samples and the SIGTERM then go to the sluice process it starts.
RUST_LOG=${RUST_LOG:-info} ${SOAK_WRAPPER:-} "$SLUICE" --config "$WORK/sluice.toml" --listen 127.0.0.1:0 \
    --data-dir "$WORK/data" "${TLS_ARGS[@]}" >"$WORK/stdout" 2>"$WORK/stderr" &
SLUICE_PID=$!
WRAPPER_PID=""
if [ -n "${SOAK_WRAPPER:-}" ]; then
    WRAPPER_PID=$SLUICE_PID
    for _ in $(seq 100); do
        SLUICE_PID=$(pgrep -n -f "sluice --config $WORK/sluice.toml") && break
        sleep 0.1
    done
fi
for _ in $(seq 100); do
    grep -q '^sluice ready' "$WORK/stdout" 2>/dev/null && break
    sleep 0.1
done
READY=$(grep -m1 "^sluice ready" "$WORK/stdout")
PORT=$(echo "$READY" | tr ' ' '\n' | sed -n 's/^mqtt=.*:\([0-9]*\)$/\1/p' | head -1)
TLS_PORT=$(echo "$READY" | tr ' ' '\n' | grep -v -e '^mqtt=' -e '^metrics=' | sed -n 's/^[a-z]*=127\.0\.0\.1:\([0-9]*\)$/\1/p' | head -1)
METRICS=$(echo "$READY" | tr ' ' '\n' | sed -n 's/^metrics=//p' | head -1)
[ -n "$PORT" ] || { echo "soak.sh: no ready line: $READY"; cat "$WORK/stderr"; exit 1; }
echo "== $READY (pid $SLUICE_PID), $MINUTES min, work dir $WORK"

START=$(date +%s)
DEADLINE=$((START + MINUTES * 60))
running() { [ ! -e "$STOP" ] && [ "$(date +%s)" -lt "$DEADLINE" ]; }
bg() { "$@" & PIDS+=($!); }

# ---------------------------------------------------------------- drivers
storm() { while running; do
    timeout 60 "$LOAD" conns --port "$PORT" --connections 500 --connect-concurrency 64 --duration 2 >>"$WORK/conns.jsonl" 2>/dev/null
    sleep 1
done; }
persist() { while running; do
    timeout 120 "$LOAD" persist --port "$PORT" --publishers 4 --rate 500 --duration 20 --drain 10 >>"$WORK/persist.jsonl" 2>>"$WORK/load.err"
done; }
pairs() { while running; do
    timeout 120 "$LOAD" pairs --port "$PORT" --qos 0 --pairs 10 --rate 1000 --duration 15 >>"$WORK/pairs.jsonl" 2>>"$WORK/load.err"
    timeout 120 "$LOAD" latency --port "$PORT" --qos 1 --rate 200 --duration 15 >>"$WORK/latency.jsonl" 2>>"$WORK/load.err"
done; }
qos2() { local n=0; while running; do
    timeout 10 mosquitto_pub -p "$PORT" -q 2 -i "soak-q2-$n" -t "soak/q2/$((n % 7))" -m "q2-$n" 2>/dev/null
    n=$((n + 1)); sleep 0.05
done; }
# Two overlapping loops with one persistent client id take each other's session over.
taker() { while running; do
    timeout 10 mosquitto_sub -p "$PORT" -i soak-taker -c -q 1 -t 'soak/acct/#' -W 2 -F '%p' >>"$WORK/acct.received" 2>/dev/null
done; }
acct_pub() { local n=0; while running; do
    if timeout 10 mosquitto_pub -p "$PORT" -q 1 -i "soak-acct-pub" -t "soak/acct/$((n % 10))" -m "acct-$n" 2>/dev/null; then
        echo "acct-$n" >>"$WORK/acct.acked"
    fi
    n=$((n + 1)); sleep 0.02
done; }
churn() { local n=0; while running; do
    if [ $((n % 2)) = 0 ]; then
        timeout 10 mosquitto_sub -p "$PORT" -i "soak-churn-$n" -t "soak/churn/$n/#" -t "soak/churn/+/x" -t "soak/q2/#" -W 1 >/dev/null 2>&1
    else
        timeout 10 mosquitto_sub -p "$PORT" -i "soak-churnp-$((n % 20))" -c -q 1 -t "soak/churn/$n/#" -U "soak/churn/$((n - 20))/#" -W 1 >/dev/null 2>&1
    fi
    n=$((n + 1))
done; }
# CONNECT (3.1.1, clean, keepalive 0) for a short client id, as printf escapes.
connect_bytes() {
    local id=$1 rl il
    rl=$(printf '\\x%02x' $((12 + ${#id})))
    il=$(printf '\\x%02x' ${#id})
    printf "\\x10${rl}\\x00\\x04MQTT\\x04\\x02\\x00\\x00\\x00${il}%s" "$id"
}
slow_consumer() {
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return
    connect_bytes soak-slow >&3
    # SUBSCRIBE id 1, soak/# at QoS 1; then never read again.
    printf '\x82\x0b\x00\x01\x00\x06soak/#\x01' >&3
    while running; do sleep 1; done
    exec 3>&-
}
malformed() { local n=0; while running; do
    if exec 4<>"/dev/tcp/127.0.0.1/$PORT"; then
        connect_bytes "soak-bad-$((n % 100))" >&4
        head -c $((RANDOM % 2000 + 1)) /dev/urandom >&4 2>/dev/null
        exec 4>&-
    fi
    n=$((n + 1)); sleep 0.3
done; }
tls_pub() { local n=0; while running; do
    timeout 10 mosquitto_pub -h 127.0.0.1 -p "$TLS_PORT" --cafile "$CAFILE" -q 1 -i "soak-tls-$((n % 5))" -t "soak/tls/$((n % 5))" -m "tls-$n" 2>>"$WORK/tls.err" \
        && echo ok >>"$WORK/tls.ok"
    n=$((n + 1)); sleep 0.2
done; }
dlq_drain() { timeout 30 mosquitto_sub -p "$PORT" -i sluice-dlq -c -q 1 -t '$DLQ/#' -W "$1" -F '%t %p' >>"$WORK/dlq.txt" 2>/dev/null; }
dlq_loop() { while running; do sleep 20; dlq_drain 3; done; }

# What the broker says it holds, from /metrics: queued and inflight messages, the queue
# budget in use (bytes held by all sessions, bookkeeping included), the dead-letter
# session's depth, sessions, connections and live log bytes.
MCOLS="sluice_queued_messages sluice_inflight_messages sluice_queue_budget_used_bytes sluice_dead_letter_queued_messages sluice_sessions_offline_persistent sluice_connections sluice_store_live_bytes"
scrape() {
    local body
    body=$(curl -s --max-time 5 "http://$METRICS/metrics" 2>/dev/null)
    for m in $MCOLS; do
        printf ',%s' "$(echo "$body" | awk -v m="$m" '$1 == m {printf "%.0f", $2; exit}')"
    done
}
sample() {
    echo "elapsed_s,rss_kib,fds,threads$(echo " $MCOLS" | tr ' ' ',')" >"$WORK/soak.csv"
    while running; do
        local rss fds thr
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SLUICE_PID/status" 2>/dev/null)
        thr=$(awk '/^Threads:/ {print $2}' "/proc/$SLUICE_PID/status" 2>/dev/null)
        fds=$(ls "/proc/$SLUICE_PID/fd" 2>/dev/null | wc -l)
        [ -n "$rss" ] && echo "$(($(date +%s) - START)),$rss,$fds,$thr$(scrape)" >>"$WORK/soak.csv"
        sleep 5
    done
}

bg sample
bg slow_consumer
bg storm
bg persist
bg pairs
bg qos2
bg taker
sleep 1
bg taker
bg acct_pub
bg churn
bg churn
bg malformed
bg malformed
bg dlq_loop
[ -n "$TLS_PORT" ] && [ -n "$CAFILE" ] && bg tls_pub

while running; do
    sleep 5
    if ! kill -0 "$SLUICE_PID" 2>/dev/null; then echo "sluice died"; break; fi
    printf '\r  %ds / %ds  ' $(($(date +%s) - START)) $((MINUTES * 60))
done
echo
touch "$STOP"
echo "== stopping drivers"
for p in "${PIDS[@]}"; do
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill "$p" 2>/dev/null
done
wait "${PIDS[@]}" 2>/dev/null
PIDS=()
ALIVE=1
kill -0 "$SLUICE_PID" 2>/dev/null || ALIVE=0
# What is still queued for the taker's session, then for the dead-letter session.
if [ "$ALIVE" = 1 ]; then
    rm -f "$STOP"
    DEADLINE=$(($(date +%s) + 60))
    timeout 20 mosquitto_sub -p "$PORT" -i soak-taker -c -q 1 -t 'soak/acct/#' -W 5 -F '%p' >>"$WORK/acct.received" 2>/dev/null
    dlq_drain 8
    touch "$STOP"
    kill -TERM "$SLUICE_PID"
    for _ in $(seq 100); do kill -0 "$SLUICE_PID" 2>/dev/null || break; sleep 0.2; done
fi
if [ -n "$WRAPPER_PID" ]; then
    # Not our child: the wrapper's status stands for sluice's.
    wait "$WRAPPER_PID" 2>/dev/null
else
    wait "$SLUICE_PID" 2>/dev/null
fi
EXIT=$?
SLUICE_PID=""

# ---------------------------------------------------------------- summary
FAIL=()
CSV="$WORK/soak.csv"
stats() { # column -> "start max end q2mean q4mean"
    awk -F, -v c="$1" 'NR > 1 { v[++n] = $c } END {
        if (n == 0) { print "0 0 0 0 0"; exit }
        m = 0; for (i = 1; i <= n; i++) if (v[i] > m) m = v[i]
        q = int(n / 4); if (q < 1) q = 1
        s2 = 0; k2 = 0; for (i = q + 1; i <= 2 * q && i <= n; i++) { s2 += v[i]; k2++ }
        s4 = 0; k4 = 0; for (i = n - q + 1; i <= n; i++) { s4 += v[i]; k4++ }
        printf "%d %d %d %.0f %.0f\n", v[1], m, v[n], (k2 ? s2 / k2 : 0), (k4 ? s4 / k4 : 0) }' "$CSV"
}
read -r R0 RMAX REND RQ2 RQ4 <<<"$(stats 2)"
read -r F0 FMAX FEND FQ2 FQ4 <<<"$(stats 3)"
read -r T0 TMAX TEND _ _ <<<"$(stats 4)"
SAMPLES=$(($(wc -l <"$CSV") - 1))
echo "== $SAMPLES samples (every 5 s) in $CSV"
printf 'RSS MiB  start %.1f  max %.1f  end %.1f  | mean 2nd quarter %.1f, 4th quarter %.1f\n' \
    "$(echo "$R0/1024" | bc -l)" "$(echo "$RMAX/1024" | bc -l)" "$(echo "$REND/1024" | bc -l)" \
    "$(echo "$RQ2/1024" | bc -l)" "$(echo "$RQ4/1024" | bc -l)"
echo "fds      start $F0  max $FMAX  end $FEND  | mean 2nd quarter $FQ2, 4th quarter $FQ4"
echo "threads  start $T0  max $TMAX  end $TEND"
# What the broker itself holds, to tell bounded queues filling from a leak: RSS growth
# that the queue budget (bytes in all queues and inflight windows) does not explain is
# the broker's own.
read -r B0 BMAX BEND BQ2 BQ4 <<<"$(stats 7)"
read -r _ DMAX DEND _ _ <<<"$(stats 8)"
printf 'held by sessions (queue budget) MiB  start %.1f  max %.1f  end %.1f  | mean 2nd quarter %.1f, 4th quarter %.1f\n' \
    "$(echo "$B0/1048576" | bc -l)" "$(echo "$BMAX/1048576" | bc -l)" "$(echo "$BEND/1048576" | bc -l)" \
    "$(echo "$BQ2/1048576" | bc -l)" "$(echo "$BQ4/1048576" | bc -l)"
echo "dead-letter session depth  max $DMAX  end $DEND"
# Growth trend after warm-up: the last quarter's mean more than 10% + 8 MiB (RSS) or
# 10% + 50 (fds) above the second quarter's.
if [ "$(echo "$RQ4 > $RQ2 * 1.10 + 8192" | bc)" = 1 ]; then FAIL+=("RSS grows after warm-up"); RTREND=yes; else RTREND=no; fi
if [ "$(echo "$FQ4 > $FQ2 * 1.10 + 50" | bc)" = 1 ]; then FAIL+=("fds grow after warm-up"); FTREND=yes; else FTREND=no; fi
echo "growth trend after warm-up: RSS $RTREND, fds $FTREND"

sum_field() { grep -o "\"$2\":[0-9]*" "$WORK/$1" 2>/dev/null | cut -d: -f2 | awk '{s += $1} END {print s + 0}'; }
P_ACKED=$(sum_field persist.jsonl acked)
P_RECV=$(sum_field persist.jsonl received)
P_RUNS=$(wc -l <"$WORK/persist.jsonl" 2>/dev/null || echo 0)
echo "load persist (QoS 1 -> persistent subscriber): $P_RUNS runs, acked $P_ACKED, received $P_RECV"
[ "$P_RECV" -ge "$P_ACKED" ] || FAIL+=("load persist received $P_RECV < acked $P_ACKED")

touch "$WORK/acct.acked" "$WORK/acct.received" "$WORK/dlq.txt"
ACKED=$(sort -u "$WORK/acct.acked" | wc -l)
sort -u "$WORK/acct.received" >"$WORK/acct.r"
awk '$1 ~ /^\$DLQ\/.*soak\/acct\// {print $2}' "$WORK/dlq.txt" | sort -u >"$WORK/acct.d"
RECV=$(comm -12 <(sort -u "$WORK/acct.acked") "$WORK/acct.r" | wc -l)
MISSING=$(sort -u "$WORK/acct.acked" | comm -23 - "$WORK/acct.r" | comm -23 - "$WORK/acct.d" | wc -l)
DLQ_N=$(wc -l <"$WORK/dlq.txt")
DLQ_REASONS=$(awk '{split($1, a, "/"); print a[2]}' "$WORK/dlq.txt" | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')
echo "accounted QoS 1 (takeover client id): acked $ACKED, received $RECV, only in \$DLQ $((ACKED - RECV - MISSING)), missing $MISSING"
echo "dead letters drained: $DLQ_N ($DLQ_REASONS)"
[ "$MISSING" = 0 ] || FAIL+=("$MISSING acknowledged QoS 1 messages neither received nor dead-lettered")
[ "$ACKED" -gt 0 ] || FAIL+=("the accounted publisher got no PUBACK")
[ -e "$WORK/tls.ok" ] && echo "TLS publishes acked: $(wc -l <"$WORK/tls.ok")"
[ -n "$TLS_PORT" ] && [ ! -e "$WORK/tls.ok" ] && FAIL+=("no TLS publish succeeded")
echo "connection storms: $(wc -l <"$WORK/conns.jsonl" 2>/dev/null || echo 0) rounds of 500"

PANICS=$(grep -c 'panicked' "$WORK/stderr")
# Protocol rejections are WARN/INFO; any ERROR is unexpected except a shed dead letter,
# which is counted (it is a discard) and fails the run too.
ERRORS=$(grep ' ERROR ' "$WORK/stderr" | grep -c -v -E 'TLS handshake (failed|timed out)')
echo "stderr: $(wc -l <"$WORK/stderr") lines, $PANICS panics, $ERRORS unexpected ERROR lines"
grep ' ERROR ' "$WORK/stderr" | sed -E 's/^[^ ]+ +//' | sort | uniq -c | sort -rn | head -5
[ "$PANICS" = 0 ] || FAIL+=("panics in stderr")
[ "$ERRORS" = 0 ] || FAIL+=("unexpected ERROR lines")
[ "$ALIVE" = 1 ] || FAIL+=("sluice died during the soak")
[ "$EXIT" = 0 ] || FAIL+=("sluice exited $EXIT on SIGTERM")

if [ ${#FAIL[@]} = 0 ]; then
    echo "PASS"
    exit 0
fi
printf 'FAIL: %s\n' "${FAIL[@]}"
KEEP=1
exit 1
