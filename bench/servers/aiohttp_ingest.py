"""
The fastest Python peer: aiohttp on uvloop serving ``/ws/audio`` with the same ingest work.

Wire contract (the benchmark's S2 "/ws/audio" style):

* ``GET /ws/audio?codec=opus&sample_rate=48000&channels=1`` upgrades to a WebSocket;
* the server sends one text greeting ``{"status":"connected","session_id":...,"config":{...}}``;
* each binary message is one Opus packet or PCM frame: it is decoded, resampled to 16 kHz and run
  through VAD (:mod:`ingest_work`, txvoice's audio code when importable), then acknowledged, in
  order, with one text message ``{"status":"chunk_received",...}``.

The work runs inline on the event loop (no thread hop): the cheapest way aiohttp can do it.
permessage-deflate is left at aiohttp's default (accepted when a client offers it).

For the benchmark's reactor-lag figure it runs txvoice's probe method on the event loop
(``lagprobe.py``: a timer every 0.25 s, how late it fires); ``GET /lag`` answers its JSON.
Listens on 127.0.0.1 only.  Usage: python bench/servers/aiohttp_ingest.py --port PORT [--lag-interval 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid

import uvloop
from aiohttp import WSMsgType, web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest_work import IMPLEMENTATION, IngestStream  # noqa: E402
from lagprobe import INTERVAL, LagRecorder, start_asyncio  # noqa: E402


async def audio(request: web.Request) -> web.WebSocketResponse:
    q = request.query
    try:
        codec = q.get("codec", "opus")
        rate = int(q.get("sample_rate", "48000"))
        channels = int(q.get("channels", "1"))
        stream = IngestStream(codec, rate, channels)
    except Exception as e:  # an unsupported format: refuse the upgrade
        raise web.HTTPBadRequest(text=f"unsupported format: {e}") from None
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    session_id = "sess_" + uuid.uuid4().hex[:16]
    config = {"codec": codec, "sample_rate": rate, "channels": channels, "ingest": IMPLEMENTATION}
    await ws.send_str(json.dumps({"status": "connected", "session_id": session_id, "config": config}))
    sequence = 0
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            sequence += 1
            try:
                speech = stream.ingest(msg.data)
            except Exception as e:
                await ws.send_str(json.dumps({"status": "error", "sequence": sequence, "error": str(e)}))
                continue
            await ws.send_str(
                '{"status":"chunk_received","sequence":%d,"speech":%s}' % (sequence, "true" if speech else "false")
            )
        elif msg.type == WSMsgType.ERROR:
            break
    return ws


def lag_handler(recorder: LagRecorder):
    async def lag(request: web.Request) -> web.Response:
        return web.Response(body=recorder.http_body(dict(request.query)), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    return lag


def main() -> None:
    parser = argparse.ArgumentParser(description="aiohttp + uvloop /ws/audio ingest server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lag-interval", type=float, default=INTERVAL,
                        help=f"event-loop lag probe interval in seconds [{INTERVAL}: txvoice's]")
    args = parser.parse_args()
    recorder = LagRecorder(args.lag_interval)
    app = web.Application()
    app.router.add_get("/ws/audio", audio)
    app.router.add_get("/lag", lag_handler(recorder))

    async def start_probe(app: web.Application) -> None:
        start_asyncio(asyncio.get_running_loop(), recorder)

    app.on_startup.append(start_probe)
    print(f"aiohttp ingest ({IMPLEMENTATION}) listening on 127.0.0.1:{args.port}", flush=True)
    loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, backlog=1024, loop=loop)


if __name__ == "__main__":
    main()
