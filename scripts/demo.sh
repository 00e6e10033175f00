#!/usr/bin/env bash
# weft's demo: a whole flannel-style deployment on one machine, in network namespaces.
#
#   switch (bridge sw0 in its own namespace)
#     ├─ etcd  192.0.2.250   Debian's etcd, temporary data dir
#     ├─ host1 192.0.2.1 ─ weft ─ br0 (FLANNEL_SUBNET, as dockerd --bip) ─ ctr1a (.2), ctr1b (.3)
#     ├─ host2 192.0.2.2 ─ weft ─ br0 ─ ctr2a, ctr2b
#     └─ host3 192.0.2.3 ─ weft ─ br0 ─ ctr3a, ctr3b
#
# It installs what is missing (apt-get), builds weft, writes the network config with etcdctl put,
# starts weft on every host, pings every pair of containers across hosts, runs a 5-second iperf3
# between host 1 and host 2, prints a summary, and removes everything it created (also on Ctrl-C
# or failure). Exits 0 only if every ping succeeded. Run as root: scripts/demo.sh [BACKEND]
# (as a user with sudo, it re-runs itself with sudo)
# where BACKEND is udp (default), vxlan (the kernel's device), vxlan-userspace, host-gw or
# vxlan-dualstack (the kernel's vxlan with "EnableIPv6": every host also gets fd00:192::<n> on the
# underlay, every container an IPv6 address from FLANNEL_IPV6_SUBNET, and a second ping matrix
# runs over IPv6).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOSTS=3
ETCD_IP=192.0.2.250
ETCD_URL="http://$ETCD_IP:2379"
DUAL=0
case "${1:-udp}" in
  udp) BACKEND='{"Type": "udp"}' ;;
  vxlan) BACKEND='{"Type": "vxlan"}' ;;
  vxlan-userspace) BACKEND='{"Type": "vxlan", "Userspace": true}' ;;
  host-gw) BACKEND='{"Type": "host-gw"}' ;;
  vxlan-dualstack)
    BACKEND='{"Type": "vxlan"}'
    DUAL=1
    ;;
  *)
    echo "usage: $0 [udp|vxlan|vxlan-userspace|host-gw|vxlan-dualstack]" >&2
    exit 2
    ;;
esac
if [ "$DUAL" = 1 ]; then
  CONFIG="{\"Network\": \"10.1.0.0/16\", \"SubnetLen\": 24, \"EnableIPv6\": true, \"IPv6Network\": \"fc00::/48\", \"Backend\": $BACKEND}"
else
  CONFIG="{\"Network\": \"10.1.0.0/16\", \"SubnetLen\": 24, \"Backend\": $BACKEND}"
fi
START=$SECONDS

say() { printf '==> %s\n' "$*"; }
die() {
  printf 'demo.sh: %s\n' "$*" >&2
  exit 1
}

if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then
    exec sudo "$0" "$@"
  fi
  echo "scripts/demo.sh: run as root (it creates network namespaces and TUN devices)" >&2
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# State and cleanup (installed before anything is created).
# ---------------------------------------------------------------------------------------------
PREFIX="wdemo$$"
if ip netns list 2>/dev/null | grep -q "^$PREFIX-"; then # a stale run with a recycled pid
  PREFIX="wdemo$$r$RANDOM"
fi
exec 3>&1 4>&2 # kept for the cleanup
TMP=""
NAMESPACES=() # in creation order; deleted in reverse
PIDS=()       # every background process started (weft, etcd, iperf3 server)
WEFT_PIDS=()
ETCD_PID=""
SHOW_LOGS=0  # set when a failure should print the log tails
CLEANED=0

alive() { # pid is running (not a zombie)
  local s
  [ -r "/proc/$1/stat" ] || return 1
  s=$(<"/proc/$1/stat") 2>/dev/null || return 1
  s=${s##*) }
  [ "${s:0:1}" != Z ]
}

log_tails() { # the logs that explain a failure: weft that exited, else every weft; etcd
  [ -n "$TMP" ] && [ -d "$TMP" ] || return 0
  local h dead=() pid
  for ((h = 1; h <= ${#WEFT_PIDS[@]}; h++)); do
    pid=${WEFT_PIDS[h - 1]}
    alive "$pid" || dead+=("$h")
  done
  if [ "${#dead[@]}" -gt 0 ]; then
    for h in "${dead[@]}"; do tail_of "$TMP/weft-host$h.log" 20 "weft on host$h exited"; done
  else
    for ((h = 1; h <= ${#WEFT_PIDS[@]}; h++)); do tail_of "$TMP/weft-host$h.log" 8; done
  fi
  if [ -n "$ETCD_PID" ] && ! alive "$ETCD_PID"; then
    tail_of "$TMP/etcd.log" 20 "etcd exited"
  else
    tail_of "$TMP/etcd.log" 5
  fi
}

tail_of() { # file lines [note]
  [ -s "$1" ] || return 0
  printf -- '--- last lines of %s%s ---\n' "$(basename "$1")" "${3:+ ($3)}" >&2
  tail -n "$2" "$1" >&2
}

stop_pids() { # SIGTERM, up to 5 s, then SIGKILL; reaps
  local p i left
  for p in "$@"; do if alive "$p"; then kill -TERM "$p" 2>/dev/null || true; fi; done
  for ((i = 0; i < 50; i++)); do
    left=0
    for p in "$@"; do alive "$p" && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for p in "$@"; do if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
  exec 1>&3 2>&4   # the script's own stdout/stderr, even if interrupted inside a redirection
  [ "$CLEANED" = 1 ] && return
  CLEANED=1
  if [ "$rc" != 0 ] && [ "$SHOW_LOGS" = 1 ]; then
    log_tails
  fi
  [ "${#PIDS[@]}" -gt 0 ] && say "cleaning up (weft and etcd: SIGTERM; ${#NAMESPACES[@]} namespaces; $TMP)"
  # weft first (it releases nothing it needs etcd for on exit, but give it a clean shutdown).
  [ "${#WEFT_PIDS[@]}" -gt 0 ] && stop_pids "${WEFT_PIDS[@]}"
  [ "${#PIDS[@]}" -gt 0 ] && stop_pids "${PIDS[@]}"
  local i ns p
  for ((i = ${#NAMESPACES[@]} - 1; i >= 0; i--)); do
    ns=${NAMESPACES[i]}
    # Anything still inside one of our namespaces was started by this script.
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    [ -e "/run/netns/$ns" ] || continue
    ip netns del "$ns" || echo "demo.sh: could not delete namespace $ns" >&2
  done
  [ -n "$TMP" ] && rm -rf "$TMP"
  if [ "$rc" = 130 ] || [ "$rc" = 143 ]; then
    echo "demo.sh: interrupted; everything removed" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "demo.sh: line $LINENO: failed: $BASH_COMMAND" >&2' ERR

TMP=$(mktemp -d "${TMPDIR:-/tmp}/weft-demo.XXXXXX")

# ---------------------------------------------------------------------------------------------
# 1. Packages.
# ---------------------------------------------------------------------------------------------
. "$REPO/scripts/lib/packages.sh"
# shellcheck disable=SC2207
packages=(etcd-server etcd-client iperf3 iproute2 iputils-ping iptables $(build_packages))
ensure_packages "$TMP/apt.log" "${packages[@]}"

# ---------------------------------------------------------------------------------------------
# 2. Build (as the user who ran sudo, so target/ keeps its owner and their rustup is used).
# ---------------------------------------------------------------------------------------------
# Build as the user who ran sudo when they have cargo (rustup under their home) and may write
# target/, so that target/ keeps its owner; otherwise as root. sudo's PATH lacks ~/.cargo/bin.
cargo_path() { echo "$(getent passwd "$1" | cut -d: -f6)/.cargo/bin:$PATH"; }
BUILD_USER=""
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] &&
  runuser -u "$SUDO_USER" -- env PATH="$(cargo_path "$SUDO_USER")" sh -c \
    "command -v cargo && test -w '$REPO' && { test ! -e '$REPO/target' || test -w '$REPO/target'; }" \
    >/dev/null 2>&1; then
  BUILD_USER=$SUDO_USER
elif PATH=$(cargo_path root) command -v cargo >/dev/null; then
  BUILD_USER=root
else
  die "cargo not found; install Rust first (https://rustup.rs), then run $0 again"
fi
WEFT="${CARGO_TARGET_DIR:-$REPO/target}/release/weft"
say "building weft (cargo build --release --bin weft, as $BUILD_USER; log: build.log)"
build=(env "HOME=$(getent passwd "$BUILD_USER" | cut -d: -f6)" "PATH=$(cargo_path "$BUILD_USER")"
  cargo build --release --bin weft)
[ "$BUILD_USER" = root ] || build=(runuser -u "$BUILD_USER" -- "${build[@]}")
if ! (cd "$REPO" && "${build[@]}") >"$TMP/build.log" 2>&1; then
  tail -n 30 "$TMP/build.log" >&2
  die "build failed"
fi
[ -x "$WEFT" ] || die "no binary at $WEFT after the build"
SHOW_LOGS=1
T0=$SECONDS # the demo proper starts here (budget: under 2 minutes)

# ---------------------------------------------------------------------------------------------
# 3. Namespaces: switch, etcd host, hosts with br0 and two containers each.
# ---------------------------------------------------------------------------------------------
new_ns() {
  NAMESPACES+=("$1") # first, so that an interrupt right after the add still removes it
  ip netns add "$1"
  ip -n "$1" link set lo up
}
nsx() { # run in a namespace
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}

SW="$PREFIX-sw"
ETCD_NS="$PREFIX-etcd"
host_ns() { echo "$PREFIX-h$1"; }
ctr_ns() { echo "$PREFIX-h$1$2"; } # $2 = a | b
CTRS=()                            # "host letter" pairs: "1 a", "1 b", …
for ((h = 1; h <= HOSTS; h++)); do CTRS+=("$h a" "$h b"); done

say "creating namespaces $PREFIX-*: switch, etcd host $ETCD_IP, $HOSTS hosts with br0 and 2 containers each"
new_ns "$SW"
ip -n "$SW" link add sw0 type bridge
ip -n "$SW" link set sw0 up

plug() { # plug namespace $1 into the switch as ul0 with address $3, switch port $2
  ip link add ul0 netns "$1" type veth peer name "$2" netns "$SW"
  ip -n "$SW" link set "$2" master sw0 up
  ip -n "$1" addr add "$3/24" dev ul0
  ip -n "$1" link set ul0 up
}

new_ns "$ETCD_NS"
plug "$ETCD_NS" pe "$ETCD_IP"
for ((h = 1; h <= HOSTS; h++)); do
  hn=$(host_ns "$h")
  new_ns "$hn"
  plug "$hn" "p$h" "192.0.2.$h"
  # ip_forward on, rp_filter off (as on a Docker host); /proc/sys/net is per namespace.
  nsx "$hn" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward
    echo 0 >/proc/sys/net/ipv4/conf/all/rp_filter; echo 0 >/proc/sys/net/ipv4/conf/default/rp_filter'
  if [ "$DUAL" = 1 ]; then # the IPv6 underlay: no DAD, so the address is usable at once
    ip -n "$hn" -6 addr add "fd00:192::$h/64" dev ul0 nodad
    nsx "$hn" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/forwarding'
  fi
  ip -n "$hn" link add br0 type bridge
  ip -n "$hn" link set br0 up
  for c in a b; do
    cn=$(ctr_ns "$h" "$c")
    new_ns "$cn"
    ip link add eth0 netns "$cn" type veth peer name "veth$c" netns "$hn"
    ip -n "$hn" link set "veth$c" master br0 up
    ip -n "$cn" link set eth0 up
  done
done

# ---------------------------------------------------------------------------------------------
# etcd.
# ---------------------------------------------------------------------------------------------
etcdctl_() {
  nsx "$ETCD_NS" env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_URL" --dial-timeout=1s \
    --command-timeout=5s "$@"
}
say "starting etcd on $ETCD_URL (log: etcd.log)"
# Background processes are started with `ip netns exec` itself (it execs), so $! is their pid.
ip netns exec "$ETCD_NS" etcd --name e1 --data-dir "$TMP/etcd-data" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://$ETCD_IP:2380" --initial-advertise-peer-urls "http://$ETCD_IP:2380" \
  --initial-cluster "e1=http://$ETCD_IP:2380" --initial-cluster-state new \
  </dev/null >"$TMP/etcd.log" 2>&1 &
ETCD_PID=$!
PIDS+=("$ETCD_PID")
deadline=$((SECONDS + 20))
until etcdctl_ endpoint health >/dev/null 2>&1; do
  alive "$ETCD_PID" || die "etcd exited"
  [ "$SECONDS" -lt "$deadline" ] || die "etcd not healthy within 20 s"
  sleep 0.2
done

# ---------------------------------------------------------------------------------------------
# 4. Network config.
# ---------------------------------------------------------------------------------------------
say "etcdctl put /coreos.com/network/config '$CONFIG'"
etcdctl_ put /coreos.com/network/config "$CONFIG" >/dev/null

# ---------------------------------------------------------------------------------------------
# 5. weft on every host; subnet.env; br0 and containers addressed as dockerd --bip/--mtu would.
# ---------------------------------------------------------------------------------------------
for ((h = 1; h <= HOSTS; h++)); do
  say "host$h: weft run --iface ul0 --etcd-endpoints $ETCD_URL --subnet-file \$TMP/host$h.env (log: weft-host$h.log)"
  RUST_LOG=info ip netns exec "$(host_ns "$h")" "$WEFT" run --iface ul0 --etcd-endpoints "$ETCD_URL" \
    --subnet-file "$TMP/host$h.env" </dev/null >"$TMP/weft-host$h.log" 2>&1 &
  WEFT_PIDS+=("$!")
done

declare -A SUBNET MTU CIP SUBNET6 CIP6 KEY6
deadline=$((SECONDS + 30))
for ((h = 1; h <= HOSTS; h++)); do
  until grep -q '^FLANNEL_MTU=' "$TMP/host$h.env" 2>/dev/null; do
    alive "${WEFT_PIDS[h - 1]}" || die "weft on host$h exited"
    [ "$SECONDS" -lt "$deadline" ] || die "host$h: no subnet.env within 30 s"
    sleep 0.1
  done
  sleep 0.05 # the file is written whole (rename), but be safe about the last line
done

for ((h = 1; h <= HOSTS; h++)); do
  env_file="$TMP/host$h.env"
  say "host$h subnet.env:"
  sed 's/^/      /' "$env_file"
  SUBNET[$h]=$(sed -n 's/^FLANNEL_SUBNET=//p' "$env_file")
  MTU[$h]=$(sed -n 's/^FLANNEL_MTU=//p' "$env_file")
  [[ ${SUBNET[$h]} =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.([0-9]+)/([0-9]+)$ ]] ||
    die "host$h: unexpected FLANNEL_SUBNET '${SUBNET[$h]}'"
  base=${BASH_REMATCH[1]} gw_last=${BASH_REMATCH[2]} plen=${BASH_REMATCH[3]}
  gw="$base.$gw_last"
  hn=$(host_ns "$h")
  ip -n "$hn" addr add "${SUBNET[$h]}" dev br0
  ip -n "$hn" link set br0 mtu "${MTU[$h]}"
  n=1
  for c in a b; do
    cn=$(ctr_ns "$h" "$c")
    CIP["$h$c"]="$base.$((gw_last + n))"
    n=$((n + 1))
    ip -n "$hn" link set "veth$c" mtu "${MTU[$h]}"
    ip -n "$cn" link set eth0 mtu "${MTU[$h]}"
    ip -n "$cn" addr add "${CIP[$h$c]}/$plen" dev eth0
    ip -n "$cn" route add default via "$gw"
  done
  if [ "$DUAL" = 1 ]; then # br0 gets FLANNEL_IPV6_SUBNET (::1), the containers ::2 and ::3
    SUBNET6[$h]=$(sed -n 's/^FLANNEL_IPV6_SUBNET=//p' "$env_file")
    [[ ${SUBNET6[$h]} =~ ^([0-9a-f:]+:)1/([0-9]+)$ ]] ||
      die "host$h: unexpected FLANNEL_IPV6_SUBNET '${SUBNET6[$h]}'"
    base6=${BASH_REMATCH[1]} plen6=${BASH_REMATCH[2]}
    KEY6[$h]="${base6}-$plen6" # the network address ends in ':' before the final 1
    [[ $base6 == *:: ]] || KEY6[$h]="${base6}0-$plen6"
    ip -n "$hn" -6 addr add "${SUBNET6[$h]}" dev br0 nodad
    n=2
    for c in a b; do
      cn=$(ctr_ns "$h" "$c")
      CIP6["$h$c"]="${base6}$n"
      n=$((n + 1))
      ip -n "$cn" -6 addr add "${CIP6[$h$c]}/$plen6" dev eth0 nodad
      ip -n "$cn" -6 route add default via "${SUBNET6[$h]%/*}"
    done
  fi
done
for ((h = 1; h <= HOSTS; h++)); do
  say "host$h: br0 ${SUBNET[$h]} mtu ${MTU[$h]}; ctr${h}a ${CIP[${h}a]}, ctr${h}b ${CIP[${h}b]}"
  if [ "$DUAL" = 1 ]; then
    say "host$h: br0 ${SUBNET6[$h]}; ctr${h}a ${CIP6[${h}a]}, ctr${h}b ${CIP6[${h}b]}"
  fi
done

# Every host learns the others' leases through its etcd watch; wait (bounded) until each host's
# first container reaches every other host's first container, so the matrix measures the network.
say "waiting until every host has learned the other hosts' leases"
deadline=$((SECONDS + 20))
for ((i = 1; i <= HOSTS; i++)); do
  for ((j = 1; j <= HOSTS; j++)); do
    [ "$i" = "$j" ] && continue
    until nsx "$(ctr_ns "$i" a)" ping -n -q -c 1 -W 1 "${CIP[${j}a]}" >/dev/null 2>&1; do
      if [ "$SECONDS" -lt "$deadline" ]; then
        sleep 0.1
        continue
      fi
      echo "demo.sh: ctr${i}a cannot reach ctr${j}a yet; measuring anyway" >&2
      break 3
    done
  done
done

# ---------------------------------------------------------------------------------------------
# 6. Ping matrix: every ordered pair of containers on different hosts.
# ---------------------------------------------------------------------------------------------
say "pinging every pair of containers on different hosts (ping -c 1 -W 2)"
ok=0 fail=0
rtts=()
declare -A RES
for src in "${CTRS[@]}"; do
  read -r sh sc <<<"$src"
  for dst in "${CTRS[@]}"; do
    read -r dh dc <<<"$dst"
    [ "$sh" = "$dh" ] && continue
    if out=$(nsx "$(ctr_ns "$sh" "$sc")" ping -n -c 1 -W 2 "${CIP[$dh$dc]}" 2>&1); then
      rtt=$(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' <<<"$out" | head -n 1)
      RES["$sh$sc>$dh$dc"]=${rtt:-ok}
      rtts+=("${rtt:-0}")
      ok=$((ok + 1))
    else
      RES["$sh$sc>$dh$dc"]=FAIL
      fail=$((fail + 1))
    fi
  done
done
# The matrix (RTT in ms; rows: from, columns: to).
{
  printf '      %-9s' "from\\to"
  for dst in "${CTRS[@]}"; do read -r dh dc <<<"$dst"; printf '%9s' "ctr$dh$dc"; done
  echo
  for src in "${CTRS[@]}"; do
    read -r sh sc <<<"$src"
    printf '      %-9s' "ctr$sh$sc"
    for dst in "${CTRS[@]}"; do
      read -r dh dc <<<"$dst"
      if [ "$sh" = "$dh" ]; then printf '%9s' "-"; else printf '%9s' "${RES[$sh$sc>$dh$dc]}"; fi
    done
    echo
  done
}
# Dual stack: the same pairs over IPv6 (after a bounded wait for the IPv6 entries).
ok6=0 fail6=0
if [ "$DUAL" = 1 ]; then
  say "pinging every pair of containers on different hosts over IPv6 (ping -6 -c 1 -W 2)"
  deadline=$((SECONDS + 20))
  for ((i = 1; i <= HOSTS; i++)); do
    for ((j = 1; j <= HOSTS; j++)); do
      [ "$i" = "$j" ] && continue
      until nsx "$(ctr_ns "$i" a)" ping -6 -n -q -c 1 -W 1 "${CIP6[${j}a]}" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || break 3
        sleep 0.1
      done
    done
  done
  for src in "${CTRS[@]}"; do
    read -r sh sc <<<"$src"
    for dst in "${CTRS[@]}"; do
      read -r dh dc <<<"$dst"
      [ "$sh" = "$dh" ] && continue
      if nsx "$(ctr_ns "$sh" "$sc")" ping -6 -n -c 1 -W 2 "${CIP6[$dh$dc]}" >/dev/null 2>&1; then
        ok6=$((ok6 + 1))
      else
        echo "demo.sh: ctr$sh$sc cannot reach ctr$dh$dc at ${CIP6[$dh$dc]} over IPv6" >&2
        fail6=$((fail6 + 1))
      fi
    done
  done
fi
rtt_stats="-"
if [ "${#rtts[@]}" -gt 0 ]; then
  rtt_stats=$(printf '%s\n' "${rtts[@]}" |
    awk 'NR==1{mn=$1;mx=$1} {s+=$1; if($1<mn)mn=$1; if($1>mx)mx=$1} END{printf "%.3f/%.3f/%.3f", mn, s/NR, mx}')
fi

# ---------------------------------------------------------------------------------------------
# 7. iperf3: ctr2a serves, ctr1a sends for 5 s.
# ---------------------------------------------------------------------------------------------
IPERF_SRC=1a IPERF_DST=2a
say "iperf3 -t 5: ctr$IPERF_SRC (${CIP[$IPERF_SRC]}) -> ctr$IPERF_DST (${CIP[$IPERF_DST]})"
timeout 20 ip netns exec "$(ctr_ns 2 a)" iperf3 -s -1 -B "${CIP[$IPERF_DST]}" \
  </dev/null >"$TMP/iperf3-server.log" 2>&1 &
PIDS+=("$!")
gbps="-"
deadline=$((SECONDS + 5))
until nsx "$(ctr_ns 2 a)" ss -Hltn "sport = :5201" 2>/dev/null | grep -q .; do
  [ "$SECONDS" -lt "$deadline" ] || break
  sleep 0.1
done
if timeout --foreground 15 ip netns exec "$(ctr_ns 1 a)" iperf3 -c "${CIP[$IPERF_DST]}" -t 5 -f g \
  </dev/null >"$TMP/iperf3-client.log" 2>&1; then
  gbps=$(awk '/receiver/ {for (i = 2; i <= NF; i++) if ($i ~ /bits\/sec/) v = $(i-1)} END {print v}' \
    "$TMP/iperf3-client.log")
  gbps=${gbps:--}
else
  echo "demo.sh: iperf3 failed:" >&2
  tail -n 5 "$TMP/iperf3-client.log" >&2
fi

# ---------------------------------------------------------------------------------------------
# 8. Counters (SIGUSR1 → one "stats" log line) and the summary.
# ---------------------------------------------------------------------------------------------
declare -A TX RX DROP PUB
field() { sed -n "s/.*\(^\| \)$1=\([0-9a-z]*\).*/\2/p" <<<"$line"; } # key=value from the stats line
for ((h = 1; h <= HOSTS; h++)); do
  log="$TMP/weft-host$h.log"
  before=$(grep -c ' stats ' "$log" || true)
  kill -USR1 "${WEFT_PIDS[h - 1]}" 2>/dev/null || true
  for ((k = 0; k < 30; k++)); do
    [ "$(grep -c ' stats ' "$log" || true)" -gt "$before" ] && break
    sleep 0.1
  done
  line=$(grep ' stats ' "$log" | tail -n 1 || true)
  alive "${WEFT_PIDS[h - 1]}" || line="tx_packets=exited rx_packets=exited dropped=exited"
  TX[$h]=$(field tx_packets) RX[$h]=$(field rx_packets) DROP[$h]=$(field dropped)
  # The public IP as leased in etcd (subnets/<net>-<len>), as other hosts see it.
  key="/coreos.com/network/subnets/$(sed 's/\.[0-9]*\//.0-/' <<<"${SUBNET[$h]}")"
  [ "$DUAL" = 1 ] && key="$key&${KEY6[$h]}" # one key for both subnets
  PUB[$h]=$(etcdctl_ get --print-value-only "$key" 2>/dev/null |
    sed -n 's/.*"PublicIP":"\([0-9.]*\)".*/\1/p')
done

total=$((ok + fail))
echo
say "summary (backend ${1:-udp})"
NA='?'
case "${1:-udp}" in vxlan | host-gw | vxlan-dualstack) NA='kernel' ;; esac # packets never pass through weft
printf '    %-6s %-14s %-15s %-5s %10s %10s %6s\n' host "public IP" subnet MTU tx_packets rx_packets drops
for ((h = 1; h <= HOSTS; h++)); do
  printf '    %-6s %-14s %-15s %-5s %10s %10s %6s\n' "host$h" "${PUB[$h]:-?}" "${SUBNET[$h]}" \
    "${MTU[$h]}" "${TX[$h]:-$NA}" "${RX[$h]:-$NA}" "${DROP[$h]:-$NA}"
done
printf '    %-14s %s\n' "ping matrix" "$ok/$total ok, $fail failed (rtt min/avg/max $rtt_stats ms)"
if [ "$DUAL" = 1 ]; then
  printf '    %-14s %s\n' "ping -6 matrix" "$ok6/$((ok6 + fail6)) ok, $fail6 failed"
fi
printf '    %-14s %s\n' "iperf3 TCP" "$gbps Gbit/s, 5 s, ctr$IPERF_SRC -> ctr$IPERF_DST (host1 -> host2)"
printf '    %-14s %s\n' "time" "$((SECONDS - T0)) s after the build ($((SECONDS - START)) s in all)"

if [ "$fail" != 0 ] || [ "$total" = 0 ]; then
  die "$fail of $total pings failed"
fi
if [ "$DUAL" = 1 ] && { [ "$fail6" != 0 ] || [ "$ok6" = 0 ]; }; then
  die "$fail6 of $((ok6 + fail6)) IPv6 pings failed"
fi
say "all $total pings succeeded"
