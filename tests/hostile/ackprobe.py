"""
A well-behaved session in its own process (so the fuzzer's or load generator's CPU and GIL do not
show up as server latency): a reliable ping every ``interval`` seconds, timed until its ``ack``,
until its stdin closes; then one JSON line: the latencies (ms) and any failure.

    python ackprobe.py ws://127.0.0.1:PORT/ [interval]
"""

from __future__ import annotations

import json
import sys
import threading
import time

from websockets.sync.client import connect


def main() -> None:
    url = sys.argv[1]
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    latencies: list[float] = []
    failure = None
    with connect(url, subprotocols=["txvoice.v1"], open_timeout=5) as ws:
        ws.recv(timeout=5)
        print("ready", flush=True)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                mid = f"k{n}"
                sent = time.perf_counter()
                ws.send(json.dumps({"type": "ping", "message_id": mid, "reliable": True}))
                while True:
                    msg = json.loads(ws.recv(timeout=5))
                    if msg["type"] == "ack" and msg["data"]["message_id"] == mid:
                        latencies.append((time.perf_counter() - sent) * 1000.0)
                        break
                stop.wait(interval)
        except Exception as e:  # noqa: BLE001 - reported to the test
            failure = repr(e)
    print(json.dumps({"latencies_ms": latencies, "failure": failure}), flush=True)


if __name__ == "__main__":
    main()
