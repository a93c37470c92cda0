#!/usr/bin/env python3
"""Delay packets of one NFQUEUE queue (the lab's replacement for netem, which this kernel lacks).

    nfq_delay.py QUEUE DELAY_MS [JITTER_MS] [--max-seconds S]

Speaks nfnetlink_queue directly over a netlink socket (stdlib only): binds QUEUE in copy-meta mode, and gives
each packet its ACCEPT verdict DELAY_MS ± JITTER_MS after it arrived (never reordering earlier than the previous
verdict). Pair it with `iptables … -j NFQUEUE --queue-num QUEUE --queue-bypass` so traffic flows unharmed when this
process is not running. Exits after --max-seconds (default 3600) or on SIGTERM; bounded in every loop.
"""
from __future__ import annotations

import argparse
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
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_PF_BIND, NFQNL_CFG_CMD_PF_UNBIND = 1, 3, 4
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


class Queue:
    def __init__(self, number: int) -> None:
        self.number = number
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.seq = 0

    def send(self, msg_type: int, family: int, payload: bytes, flags: int = NLM_F_REQUEST) -> None:
        self.seq += 1
        body = struct.pack("=BBH", family, 0, socket.htons(self.number)) + payload
        header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, self.seq, 0)
        self.sock.send(header + body)

    def config(self, command: int, pf: int = socket.AF_INET) -> None:
        self.send(NFQNL_MSG_CONFIG, socket.AF_UNSPEC, attr(NFQA_CFG_CMD, struct.pack("!BBH", command, 0, pf)))

    def setup(self) -> None:
        self.config(NFQNL_CFG_CMD_PF_UNBIND)
        self.config(NFQNL_CFG_CMD_PF_BIND)
        self.config(NFQNL_CFG_CMD_BIND)
        self.send(NFQNL_MSG_CONFIG, socket.AF_UNSPEC, attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))

    def verdict(self, packet_id: int, verdict: int = NF_ACCEPT) -> None:
        self.send(NFQNL_MSG_VERDICT, socket.AF_INET, attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))

    def packet_ids(self, data: bytes) -> list[int]:
        ids = []
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type = struct.unpack_from("=IH", data, offset)
            if length < 16 or offset + length > len(data):
                break
            if msg_type == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = offset + 16 + 4  # past nlmsghdr and nfgenmsg
                while a + 4 <= offset + length:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if (akind & 0x7FFF) == NFQA_PACKET_HDR and alen >= 8:
                        ids.append(struct.unpack_from("!I", data, a + 4)[0])
                    a += (alen + 3) & ~3
            offset += (length + 3) & ~3
        return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("queue", type=int)
    ap.add_argument("delay_ms", type=float)
    ap.add_argument("jitter_ms", type=float, nargs="?", default=0.0)
    ap.add_argument("--max-seconds", type=float, default=3600)
    args = ap.parse_args()
    if not 0 <= args.queue <= 65535 or not 0 <= args.delay_ms <= 10_000 or not 0 <= args.jitter_ms <= args.delay_ms:
        sys.exit("queue 0-65535, delay 0-10000 ms, 0 <= jitter <= delay")
    q = Queue(args.queue)
    q.setup()
    stop = time.monotonic() + args.max_seconds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pending: list[tuple[float, int]] = []
    last_release = 0.0
    while time.monotonic() < stop:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, pid = heapq.heappop(pending)
            q.verdict(pid)
        timeout = max(0.0, min(0.05, (pending[0][0] - now) if pending else 0.05))
        ready, _, _ = select.select([q.sock], [], [], timeout)
        if not ready:
            continue
        try:
            data = q.sock.recv(65536)
        except OSError:
            continue
        for pid in q.packet_ids(data):
            due = time.monotonic() + (args.delay_ms + random.uniform(-args.jitter_ms, args.jitter_ms)) / 1000
            due = max(due, last_release)  # keep order
            last_release = due
            heapq.heappush(pending, (due, pid))
    for _, pid in pending:
        q.verdict(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
