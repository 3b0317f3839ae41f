"""
The default per-address limit (``--max-connections-per-ip``, doc/dialects.md "Defaults for the
seeds' load tests") against the seeds' own load test: S1's ``load_test`` (100 concurrent
connections from one host, with the ``websockets`` library) passes against a default daemon,
while one address still cannot take more than the limit (HTTP 429 past it) on the native
endpoint or on S3's ``/voice-ws``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from daemons import start_daemon
from test_s3_dialect import SECRET, token
from txvoice.config import VoiceConfig

LIMIT = VoiceConfig().max_connections_per_ip

# S1's "Load Testing" snippet, as the seed writes it (its URI becomes the daemon's; it uses json unimported).
S1_LOAD_TEST = '''
async def load_test():
    tasks = []
    for i in range(100):  # 100 concurrent connections
        task = asyncio.create_task(test_client_connection(i))
        tasks.append(task)
    
    await asyncio.gather(*tasks)

async def test_client_connection(client_id):
    uri = "ws://localhost:8765"
    async with websockets.connect(uri) as websocket:
        # Simulate voice interaction
        await websocket.send(json.dumps({
            "type": "conversation_start",
            "data": {"conversation_id": f"load_test_{client_id}"}
        }))
        
        response = await websocket.recv()
        # Process response...
'''


@pytest.fixture(scope="module")
def default_daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("limits"), env={"TXVOICE_JWT_SECRET": SECRET})
    yield d
    d.stop()


def test_the_default_admits_s1s_load_test_and_still_bounds_one_address() -> None:
    assert 100 < LIMIT < VoiceConfig().max_connections, (LIMIT, VoiceConfig().max_connections)


def test_s1_load_test_passes_against_a_default_daemon(default_daemon) -> None:
    responses: list[str] = []

    class Recorded:
        """The snippet's connection: the real one, its answers counted."""

        def __init__(self, uri: str) -> None:
            self.uri = uri.replace("localhost:8765", f"127.0.0.1:{default_daemon.port}")

        async def __aenter__(self) -> "Recorded":
            self.ws = await websockets.connect(self.uri, open_timeout=30)
            return self

        async def __aexit__(self, *exc) -> None:
            await self.ws.close()

        async def send(self, message: str) -> None:
            await self.ws.send(message)

        async def recv(self) -> str:
            message = await self.ws.recv()
            responses.append(message)
            return message

    namespace = {"asyncio": asyncio, "json": json, "websockets": type("websockets", (), {"connect": Recorded})}
    exec(S1_LOAD_TEST, namespace)
    asyncio.run(asyncio.wait_for(namespace["load_test"](), 60))
    assert len(responses) == 100
    assert all(json.loads(r)["type"] != "error" for r in responses), [r for r in responses if "error" in r][:3]


@pytest.mark.parametrize("path", ["/", "/voice-ws"])
def test_one_address_is_refused_past_the_limit(default_daemon, path) -> None:
    url = f"ws://127.0.0.1:{default_daemon.port}{path}" + (f"?token={token()}" if path == "/voice-ws" else "")

    async def main() -> int:
        held = await asyncio.gather(*(websockets.connect(url, open_timeout=20) for _ in range(LIMIT)))
        try:
            for ws in held:
                await asyncio.wait_for(ws.recv(), 20)  # each one was served (greeting / ready)
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(url, open_timeout=20)
            return refused.value.response.status_code
        finally:
            await asyncio.gather(*(ws.close() for ws in held))

    assert asyncio.run(main()) == 429
