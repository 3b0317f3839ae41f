"""The per-connection output bound, driven in memory (the transport's pause is simulated)."""

from __future__ import annotations


from txvoice.server.backpressure import CLOSE_OUTPUT_OVERFLOW, OutputBudget, transport_buffered
from wsmemory import MemoryClient, memory_server


def statuses(client: MemoryClient) -> list[str]:
    return [m["data"].get("event_type") for m in client.messages() if m["type"] == "status"]


def test_over_the_soft_mark_audio_and_metric_pushes_are_dropped_control_replies_are_not() -> None:
    server = memory_server(output_buffer_soft_limit=4000, max_output_buffer=100_000)
    client = MemoryClient(server)
    client.messages()
    protocol = client.protocol
    budget = protocol.budget
    assert isinstance(budget, OutputBudget) and client.transport.producer is budget
    for i in range(10):  # ~5 KB of pongs the client does not read
        client.send_json({"type": "ping", "message_id": f"p{i}", "data": {"pad": "x" * 400}})
    budget.pauseProducing()  # what the transport does when its buffer fills
    server.clock.advance(0)
    assert budget.state == "congested"
    protocol.sendBinary(b"\x00" * 320)
    protocol.metricsSnapshot and protocol.sendEnvelope("metrics", protocol.metricsSnapshot())
    client.send_json({"type": "ping", "message_id": "still", "data": {}})
    messages = client.messages()
    kinds = [(m["type"], m["data"].get("event_type"), m["data"].get("reply_to")) for m in messages]
    assert ("pong", None, "still") in kinds  # the control reply went out
    assert ("status", "output_congested", None) in kinds  # told once
    assert not any(t == "metrics" for t, _, _ in kinds)  # the push was dropped
    assert not [op for op, _ in client.frames() if op == 0x2]  # the audio was dropped
    text = server.metrics.render().decode()
    assert 'txvoice_output_dropped_total{kind="audio"} 1.0' in text
    assert 'txvoice_output_dropped_total{kind="metrics"} 1.0' in text
    # The client read it all: back under half the soft mark, it is told so.
    budget.resumeProducing()
    server.clock.advance(0)
    assert statuses(client) == ["output_recovered"]
    assert budget.state == "normal"


def test_over_the_hard_mark_the_connection_is_closed_with_4006_and_its_responses_freed() -> None:
    server = memory_server(output_buffer_soft_limit=2000, max_output_buffer=8000)
    client = MemoryClient(server)
    client.messages()
    budget = client.protocol.budget
    budget.pauseProducing()
    for i in range(40):
        client.send_json({"type": "ping", "message_id": f"p{i}", "data": {"pad": "x" * 400}})
        server.clock.advance(0)
    assert budget.state == "exceeded"
    assert budget.peak < 8000 + 1000  # the hard mark plus about one message
    client.frames()
    assert client.closes and client.closes[-1][0] == CLOSE_OUTPUT_OVERFLOW
    assert 'txvoice_output_overflow_closes_total 1.0' in server.metrics.render().decode()


def test_paced_response_audio_counts_toward_the_bound() -> None:
    server = memory_server(output_buffer_soft_limit=10_000, max_output_buffer=1_000_000)
    client = MemoryClient(server)
    client.messages()
    channel = client.protocol.channel
    client.send_json({"type": "voice_start", "message_id": "s", "data": {"mode": "push_to_talk"}})
    client.messages()
    client.send_binary(b"\x01\x00" * 16000 * 4)  # 4 s of audio, echoed, paced at real time
    client.send_json({"type": "voice_end", "message_id": "e"})
    server.clock.advance(0.05)
    assert channel.queued_bytes() > 0
    assert client.protocol.budget.queued() == transport_buffered(client.transport) + channel.queued_bytes()
