#!/bin/sh
# Tunes a host for swetcd as etcd's tuning guide advises for etcd:
#   - disk: the best best-effort I/O priority for the swetcd process (ionice -c2 -n0), so WAL
#     fsyncs are not queued behind other processes' I/O;
#   - network: a prio qdisc on the interface whose highest band carries peer traffic (port
#     2380, both directions), the next band client traffic (2379), so heartbeats and log
#     replication are sent before bulk traffic.
# Idempotent: the qdisc is replaced and its filters rewritten on every run. Needs root (except
# --dry-run, which only prints the commands).
#
# Usage: deploy/tune.sh [--dry-run] [--remove] [--pid PID] [--interface IF]
#                       [--peer-port 2380] [--client-port 2379]
#   --pid        the swetcd process (default: every process named swetcd, from pgrep)
#   --interface  the network interface (default: the one of the default route)
#   --remove     undo the tc part (delete the root qdisc); I/O priority is left as is
set -eu

dry_run=0
remove=0
pids=""
iface=""
peer_port=2380
client_port=2379

usage() { sed -n '2,18s/^# \{0,1\}//p' "$0"; }

while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --remove) remove=1 ;;
    --pid) [ $# -ge 2 ] || { usage >&2; exit 2; }; pids=$2; shift ;;
    --interface) [ $# -ge 2 ] || { usage >&2; exit 2; }; iface=$2; shift ;;
    --peer-port) [ $# -ge 2 ] || { usage >&2; exit 2; }; peer_port=$2; shift ;;
    --client-port) [ $# -ge 2 ] || { usage >&2; exit 2; }; client_port=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "tune.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

for v in "$peer_port" "$client_port" $pids; do
  case $v in ''|*[!0-9]*) echo "tune.sh: not a number: '$v'" >&2; exit 2 ;; esac
done

# Runs (or with --dry-run prints) one command.
run() {
  if [ "$dry_run" -eq 1 ]; then
    echo "$*"
  else
    "$@"
  fi
}

if [ -z "$iface" ]; then
  iface=$(ip route show default 2>/dev/null | awk '/^default/ { for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
  [ -n "$iface" ] || { echo "tune.sh: no default route; give --interface" >&2; exit 1; }
fi

if [ "$remove" -eq 1 ]; then
  if [ "$dry_run" -eq 1 ]; then
    run tc qdisc del dev "$iface" root
  else
    tc qdisc del dev "$iface" root 2>/dev/null || true
  fi
  exit 0
fi

# Disk: I/O priority of the swetcd process(es).
if [ -z "$pids" ]; then
  pids=$(pgrep -x swetcd 2>/dev/null || true)
fi
if [ -z "$pids" ]; then
  echo "tune.sh: no swetcd process found (give --pid); skipping ionice" >&2
else
  for pid in $pids; do
    # Every thread: the WAL fsyncs run on swetcd's Raft thread, not the main one, and an I/O
    # priority belongs to a thread. A pid without /proc/PID/task (gone) gets one line.
    tids=$(ls "/proc/$pid/task" 2>/dev/null || true)
    for tid in ${tids:-$pid}; do
      run ionice -c2 -n0 -p "$tid"
    done
  done
fi

# Network: three bands; 1:1 peer traffic, 1:2 client traffic, the rest by the default priomap.
run tc qdisc replace dev "$iface" root handle 1: prio bands 3
if [ "$dry_run" -eq 0 ]; then
  # Rewriting the filters keeps repeated runs from stacking duplicates.
  tc filter del dev "$iface" parent 1: 2>/dev/null || true
else
  echo "tc filter del dev $iface parent 1:"
fi
for dir in sport dport; do
  run tc filter add dev "$iface" parent 1: protocol ip prio 1 u32 match ip "$dir" "$peer_port" 0xffff flowid 1:1
done
for dir in sport dport; do
  run tc filter add dev "$iface" parent 1: protocol ip prio 2 u32 match ip "$dir" "$client_port" 0xffff flowid 1:2
done
