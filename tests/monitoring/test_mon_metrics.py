"""Prometheus metrics: own registry, counters move, text exposition parses, /metrics served."""

from __future__ import annotations

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from txvoice.monitoring.metrics import STAGES, MetricsResource, VoiceMetrics


def samples(metrics: VoiceMetrics) -> dict[tuple[str, tuple], float]:
    text = metrics.render().decode("utf-8")
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: VoiceMetrics, name: str, **labels) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def test_connections():
    m = VoiceMetrics()
    m.connection_opened()
    m.connection_opened()
    m.connection_closed()
    m.connection_refused("server_full")
    m.connection_refused("something_new")
    assert value(m, "txvoice_connections_total") == 2
    assert value(m, "txvoice_connections_active") == 1
    assert value(m, "txvoice_connections_refused_total", reason="server_full") == 1
    assert value(m, "txvoice_connections_refused_total", reason="something_new") == 1
    assert value(m, "txvoice_connections_refused_total", reason="too_many_connections_per_ip") == 0


def test_messages_and_bytes():
    m = VoiceMetrics()
    m.message_in(100, binary=True)
    m.message_in(10, binary=False)
    m.message_in(20, binary=False)
    m.message_out(640, binary=True)
    assert value(m, "txvoice_messages_total", direction="in", kind="text") == 2
    assert value(m, "txvoice_messages_total", direction="in", kind="binary") == 1
    assert value(m, "txvoice_messages_total", direction="out", kind="binary") == 1
    assert value(m, "txvoice_messages_total", direction="out", kind="text") == 0
    assert value(m, "txvoice_message_bytes_total", direction="in", kind="text") == 30
    assert value(m, "txvoice_message_bytes_total", direction="out", kind="binary") == 640


def test_frames_errors_resumes_heartbeats_pools():
    m = VoiceMetrics()
    m.audio_frame_in()
    m.audio_frame_in(3)
    m.audio_frame_out(2)
    m.error("invalid_message")
    m.error("invalid_message")
    m.reconnection()
    m.heartbeat_drop()
    m.set_pool_queue_depth("audio", 7)
    assert value(m, "txvoice_audio_frames_total", direction="in") == 4
    assert value(m, "txvoice_audio_frames_total", direction="out") == 2
    assert value(m, "txvoice_errors_total", code="invalid_message") == 2
    assert value(m, "txvoice_reconnections_total") == 1
    assert value(m, "txvoice_heartbeat_drops_total") == 1
    assert value(m, "txvoice_pool_queue_depth", pool="audio") == 7


def test_error_code_cardinality_is_capped():
    m = VoiceMetrics()
    for i in range(200):
        m.error(f"code_{i}")
    codes = {dict(k[1]).get("code") for k in samples(m) if k[0] == "txvoice_errors_total"}
    assert len(codes) <= 65
    assert value(m, "txvoice_errors_total", code="other") == 200 - 64


def test_latency_histograms():
    m = VoiceMetrics()
    for stage in STAGES:
        m.observe_latency(stage, 0.12)
    m.observe_latency("total", 0.9)
    assert value(m, "txvoice_stage_latency_seconds_count", stage="total") == 2
    assert value(m, "txvoice_stage_latency_seconds_sum", stage="total") == pytest.approx(1.02)
    assert value(m, "txvoice_stage_latency_seconds_bucket", stage="stt", le="0.15") == 1
    assert value(m, "txvoice_stage_latency_seconds_bucket", stage="stt", le="0.1") == 0
    with pytest.raises(ValueError):
        m.observe_latency("bogus", 1.0)


def test_reactor_lag_histogram():
    m = VoiceMetrics()
    m.observe_reactor_lag(0.003)
    assert value(m, "txvoice_reactor_lag_seconds_count") == 1
    assert value(m, "txvoice_reactor_lag_seconds_bucket", le="0.005") == 1


def test_registries_are_independent_and_not_global():
    a, b = VoiceMetrics(), VoiceMetrics()
    a.connection_opened()
    assert value(a, "txvoice_connections_total") == 1
    assert value(b, "txvoice_connections_total") == 0
    assert REGISTRY.get_sample_value("txvoice_connections_total") is None


def test_process_metrics_optional():
    m = VoiceMetrics(process_metrics=True)
    names = {k[0] for k in samples(m)}
    assert any(n.startswith("process_") for n in names) or any(n.startswith("python_") for n in names)


@pytest_twisted.inlineCallbacks
def test_metrics_resource_over_loopback():
    import treq
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    m = VoiceMetrics()
    m.message_in(5, binary=False)
    root = Resource()
    root.putChild(b"metrics", MetricsResource(m.registry))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/metrics"
        response = yield treq.get(url, persistent=False)
        body = yield response.text()
        assert response.code == 200
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert "txvoice_messages" in families
        sample = [s for s in families["txvoice_messages"].samples
                  if s.labels == {"direction": "in", "kind": "text"} and s.name.endswith("_total")]
        assert sample[0].value == 1
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_audio_batches_and_their_items_are_counted_from_the_workers():
    """Items submitted in one reactor turn go over as one batch; the counters read the pool."""
    from twisted.internet import defer, reactor

    from txvoice.audio.workers import AudioWorkers
    from txvoice.config import VoiceConfig
    from txvoice.pipeline.echo import EchoPipeline
    from txvoice.server.context import VoiceServer

    workers = AudioWorkers(reactor, threads=1)
    server = VoiceServer(VoiceConfig(), EchoPipeline(), workers, reactor)
    workers.startService()
    try:
        assert value(server.metrics, "txvoice_pool_batches_total", pool="audio") == 0
        done = [defer.Deferred() for _ in range(5)]
        for d in done:
            workers.submit(1, lambda x: x * 2, 21, d.callback)
        results = yield defer.gatherResults(done)
        assert results == [42] * 5
        assert value(server.metrics, "txvoice_pool_batches_total", pool="audio") == 1
        assert value(server.metrics, "txvoice_pool_batch_items_total", pool="audio") == 5
        last = defer.Deferred()
        workers.submit(2, lambda x: x, None, last.callback)
        yield last
        assert value(server.metrics, "txvoice_pool_batches_total", pool="audio") == 2
        assert value(server.metrics, "txvoice_pool_batch_items_total", pool="audio") == 6
    finally:
        yield workers.stopService()
