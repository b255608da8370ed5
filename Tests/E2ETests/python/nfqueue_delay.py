#!/usr/bin/env python3
"""Delays packets handed to an NFQUEUE queue, for the fault tests (this kernel has no netem).

Usage: nfqueue_delay.py QUEUE DELAY_MS JITTER_MS

Binds queue QUEUE over a raw netfilter netlink socket (standard library only), and accepts each
packet after DELAY_MS plus a uniform random 0..JITTER_MS. Packets are released by due time, not
arrival, so a jitter larger than the gap between packets reorders them. Prints "ready" once
bound, then one line per second with the packets delayed so far; stops on SIGTERM, releasing
what it holds. The iptables rule should use --queue-bypass, so packets pass if this dies.
"""
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
CMD_BIND = 1
COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def attr(kind, payload):
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def message(kind, queue, attrs, flags=NLM_F_REQUEST, seq=0):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def request(sock, msg, seq):
    sock.send(msg)
    while True:
        data = sock.recv(65536)
        off = 0
        while off + 16 <= len(data):
            length, kind, _, mseq, _ = struct.unpack_from("=IHHII", data, off)
            if kind == NLMSG_ERROR and mseq == seq:
                (err,) = struct.unpack_from("=i", data, off + 16)
                if err != 0:
                    raise OSError(-err, os.strerror(-err))
                return
            off += (length + 3) & ~3


def main():
    queue, delay_ms, jitter_ms = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    request(sock, message(NFQNL_MSG_CONFIG, queue, [attr(NFQA_CFG_CMD, struct.pack("=BBH", CMD_BIND, 0, 0))],
                          NLM_F_REQUEST | NLM_F_ACK, 1), 1)
    request(sock, message(NFQNL_MSG_CONFIG, queue, [attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, COPY_META))],
                          NLM_F_REQUEST | NLM_F_ACK, 2), 2)
    print("ready", flush=True)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    # A child of the Swift test process inherits its blocked signals: take TERM back.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    held = []  # (due, order, packet id)
    order = 0
    delayed = 0
    last_report = time.monotonic()

    def accept(packet_id):
        sock.send(message(NFQNL_MSG_VERDICT, queue, [attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))]))

    while not stopping:
        now = time.monotonic()
        while held and held[0][0] <= now:
            accept(heapq.heappop(held)[2])
        if now - last_report >= 1:
            print(f"delayed {delayed}", flush=True)
            last_report = now
        timeout = min(0.5, max(0.0, held[0][0] - now)) if held else 0.5
        try:
            ready, _, _ = select.select([sock], [], [], timeout)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            data = sock.recv(1 << 20)
        except OSError:  # ENOBUFS when the queue overflows: the kernel dropped some; go on
            continue
        off = 0
        while off + 16 <= len(data):
            length, kind, _, _, _ = struct.unpack_from("=IHHII", data, off)
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = off + 20
                while a + 4 <= off + length:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if (akind & 0x7FFF) == NFQA_PACKET_HDR:
                        (packet_id,) = struct.unpack_from("!I", data, a + 4)
                        due = time.monotonic() + (delay_ms + random.uniform(0, jitter_ms)) / 1000
                        heapq.heappush(held, (due, order, packet_id))
                        order += 1
                        delayed += 1
                        break
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3
    for _, _, packet_id in held:
        accept(packet_id)
    print(f"delayed {delayed}", flush=True)


if __name__ == "__main__":
    main()
