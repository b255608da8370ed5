#!/bin/sh
# Tunes a host for swetcd as etcd's tuning guide advises for etcd:
#   - disk: the best best-effort I/O priority for every thread of the swetcd process
#     (ionice -c2 -n0), so WAL fsyncs are not queued behind other processes' I/O; a warning
#     when the data directory's disk scheduler ignores I/O priorities (only bfq and cfq honour
#     them);
#   - network: a root qdisc on the interface that sends peer traffic (port 2380, IPv4 and IPv6,
#     both directions) before client traffic (2379) before everything else, so heartbeats and
#     log replication are not queued behind bulk traffic. It is a prio qdisc where the kernel
#     has one, otherwise an htb qdisc whose classes borrow bandwidth in the same order.
# Idempotent: the qdisc it made is replaced and its filters rewritten on every run. A root
# qdisc somebody else set up is kept (with a warning) unless --force. Needs root (except
# --dry-run, which only prints the commands).
#
# Usage: deploy/tune.sh [--dry-run] [--remove] [--force] [--pid PID] [--interface IF]
#                       [--peer-port 2380] [--client-port 2379] [--data-dir DIR]
#   --pid        the swetcd process (default: every process named swetcd, from pgrep)
#   --interface  the network interface (default: the one of the default route)
#   --data-dir   where the WAL lives, to check its disk scheduler (default /var/lib/swetcd)
#   --remove     undo the tc part (delete the root qdisc this script made, and say so);
#                I/O priority is left as is
#   --force      replace a root qdisc this script did not make
# From systemd, systemd/swetcd-tune.conf runs it at every start of the unit.
set -eu

dry_run=0
remove=0
force=0
pids=""
iface=""
peer_port=2380
client_port=2379
data_dir=/var/lib/swetcd
# The handle of the root qdisc this script makes: how a later run recognises its own.
handle=5e7d

usage() { sed -n '2,24s/^# \{0,1\}//p' "$0"; }

while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --remove) remove=1 ;;
    --force) force=1 ;;
    --pid) [ $# -ge 2 ] || { usage >&2; exit 2; }; pids=$2; shift ;;
    --interface) [ $# -ge 2 ] || { usage >&2; exit 2; }; iface=$2; shift ;;
    --peer-port) [ $# -ge 2 ] || { usage >&2; exit 2; }; peer_port=$2; shift ;;
    --client-port) [ $# -ge 2 ] || { usage >&2; exit 2; }; client_port=$2; shift ;;
    --data-dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; data_dir=$2; shift ;;
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

# The interface's root qdisc as "KIND HANDLE" (e.g. "prio 5e7d:"), empty when none is shown.
root_qdisc() {
  tc qdisc show dev "$iface" root 2>/dev/null | awk 'NR == 1 { print $2, $3 }'
}

if [ "$remove" -eq 1 ]; then
  if [ "$dry_run" -eq 1 ]; then
    run tc qdisc del dev "$iface" root
    exit 0
  fi
  current=$(root_qdisc)
  case $current in
    *" $handle:")
      tc qdisc del dev "$iface" root
      echo "tune.sh: removed the ${current% *} root qdisc $handle: (and its filters) from $iface"
      ;;
    *)
      echo "tune.sh: nothing to remove on $iface (root qdisc: ${current:-none}, not made by tune.sh)"
      ;;
  esac
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
    # priority belongs to a thread. A pid without /proc/PID/task (gone) gets one line. Worker
    # threads come and go: one that ended after the listing is skipped, any other failure stops.
    tids=$(ls "/proc/$pid/task" 2>/dev/null || true)
    for tid in ${tids:-$pid}; do
      if ! out=$(run ionice -c2 -n0 -p "$tid" 2>&1); then
        if [ -n "$tids" ] && [ ! -d "/proc/$pid/task/$tid" ]; then continue; fi
        echo "$out" >&2
        exit 1
      fi
      [ -z "$out" ] || echo "$out"
    done
  done
fi

# Whether the disk under the data directory honours I/O priorities at all.
if [ -d "$data_dir" ]; then
  dev=$(df --output=source "$data_dir" 2>/dev/null | tail -n 1)
  name=$(basename "$(readlink -f "$dev" 2>/dev/null || echo "$dev")")
  if [ -e "/sys/class/block/$name/partition" ]; then
    name=$(basename "$(readlink -f "/sys/class/block/$name/..")")
  fi
  sched_file=/sys/class/block/$name/queue/scheduler
  if [ -r "$sched_file" ]; then
    sched=$(sed -n 's/.*\[\(.*\)\].*/\1/p' "$sched_file")
    case $sched in
      bfq|cfq) ;;
      *) echo "tune.sh: warning: $data_dir is on $name, whose I/O scheduler \"${sched:-?}\" ignores I/O priorities; ionice has no effect there (echo bfq > $sched_file, if the kernel has bfq)" >&2 ;;
    esac
  fi
fi

# Network. Keep a root qdisc somebody else made (a handle other than ours and the kernel's 0:).
current=""
[ "$dry_run" -eq 1 ] || current=$(root_qdisc)
case $current in
  ""|*" 0:"|*" $handle:"|noqueue*) ;;
  *)
    if [ "$force" -eq 0 ]; then
      echo "tune.sh: warning: $iface already has a root qdisc ($current) that tune.sh did not make; keeping it (--force replaces it)" >&2
      exit 0
    fi
    ;;
esac

# prio when the kernel has it; otherwise htb (some kernels are built without sch_prio).
kind=prio
if [ "$dry_run" -eq 0 ] && ! tc qdisc show >/dev/null 2>&1; then
  echo "tune.sh: tc does not work here" >&2; exit 1
fi
if [ "$dry_run" -eq 0 ]; then
  case $current in
    "prio $handle:") ;;
    "htb $handle:") kind=htb ;;
    *)
      # Probe: a prio qdisc can be made on this interface (then it is ours already).
      [ -z "$current" ] || case $current in *" 0:"|noqueue*) ;; *) tc qdisc del dev "$iface" root 2>/dev/null || true ;; esac
      if ! tc qdisc add dev "$iface" root handle "$handle:" prio bands 3 2>/dev/null; then
        kind=htb
        echo "tune.sh: this kernel has no prio qdisc (sch_prio); using htb classes in the same order" >&2
      fi
      ;;
  esac
fi

# Bands (prio) or classes (htb): :1 peer traffic, :2 client traffic, :3 everything else.
if [ "$kind" = prio ]; then
  run tc qdisc replace dev "$iface" root handle "$handle:" prio bands 3 priomap 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2
else
  speed=$(cat "/sys/class/net/$iface/speed" 2>/dev/null || echo -1)
  case $speed in ''|-*|*[!0-9]*) rate=10gbit ;; *) rate=${speed}mbit ;; esac
  # An htb qdisc cannot be changed in place; ours is kept and its classes rewritten.
  [ "$current" = "htb $handle:" ] || run tc qdisc replace dev "$iface" root handle "$handle:" htb default 3
  for c in 1 2 3; do
    # Each class may use the whole link; the lower prio value borrows spare bandwidth first.
    run tc class replace dev "$iface" parent "$handle:" classid "$handle:$c" htb rate 1mbit ceil "$rate" prio $((c - 1))
  done
fi
if [ "$dry_run" -eq 0 ]; then
  # Rewriting the filters keeps repeated runs from stacking duplicates.
  tc filter del dev "$iface" parent "$handle:" 2>/dev/null || true
else
  echo "tc filter del dev $iface parent $handle:"
fi
for port_band in "$peer_port 1" "$client_port 2"; do
  port=${port_band% *}
  band=${port_band#* }
  for dir in sport dport; do
    run tc filter add dev "$iface" parent "$handle:" protocol ip prio "$band" u32 match ip "$dir" "$port" 0xffff flowid "$handle:$band"
    run tc filter add dev "$iface" parent "$handle:" protocol ipv6 prio "$((band + 2))" u32 match ip6 "$dir" "$port" 0xffff flowid "$handle:$band"
  done
done
[ "$dry_run" -eq 1 ] || echo "tune.sh: $iface: $kind root qdisc $handle:, peer port $peer_port first, client port $client_port second (IPv4 and IPv6)"
