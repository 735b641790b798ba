#!/usr/bin/env python3
"""funnel-sender.py - the device side of scripts/bench/funnel.sh: JSON messages over TCP to
Funnel's raw port, each acknowledged by arcd with a `200` line.

    funnel-sender.py --host 100.127.65.43 --port 23080 -n MESSAGES -c CONNECTIONS -w WINDOW \
        --acked FILE

Each connection sends its share of `{"seq": N, "pad": "..."}` lines, keeping up to WINDOW
unanswered (arcd answers a connection's messages in order). The seq of every message answered
`200` is written to FILE (one per line); a summary is printed as JSON: sent, acked, refused (any
other answer), seconds, acked_per_second. Python standard library only.
"""

import argparse
import asyncio
import collections
import json
import time

PAD = "x" * 64


async def connection(host, port, seqs, window, acked, refused):
    reader, writer = await asyncio.open_connection(host, port)
    outstanding = collections.deque()
    slots = asyncio.Semaphore(window)

    async def read_replies():
        for _ in range(len(seqs)):
            line = await reader.readline()
            if not line:
                raise ConnectionError("arcd closed the connection")
            seq = outstanding.popleft()
            if line.strip() == b"200":
                acked.append(seq)
            else:
                refused.append((seq, line.decode(errors="replace").strip()))
            slots.release()

    replies = asyncio.create_task(read_replies())
    for seq in seqs:
        await slots.acquire()
        outstanding.append(seq)
        writer.write(json.dumps({"seq": seq, "pad": PAD}).encode() + b"\n")
        await writer.drain()
    await replies
    writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=23080)
    parser.add_argument("-n", type=int, required=True)
    parser.add_argument("-c", type=int, default=8)
    parser.add_argument("-w", type=int, default=16)
    parser.add_argument("--acked", required=True)
    args = parser.parse_args()
    acked, refused = [], []
    shares = [list(range(i, args.n, args.c)) for i in range(args.c)]
    started = time.monotonic()
    await asyncio.gather(*(connection(args.host, args.port, share, args.w, acked, refused)
                           for share in shares))
    seconds = time.monotonic() - started
    with open(args.acked, "w", encoding="utf-8") as out:
        out.writelines(f"{seq}\n" for seq in sorted(acked))
    print(json.dumps({"sent": args.n, "acked": len(acked), "refused": len(refused),
                      "first_refusals": refused[:3], "seconds": round(seconds, 3),
                      "acked_per_second": round(len(acked) / seconds, 1)}))


if __name__ == "__main__":
    asyncio.run(main())
