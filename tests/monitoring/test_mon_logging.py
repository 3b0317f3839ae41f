"""txvoice.logging: levels per namespace prefix, JSON lines, and secrets never reaching output."""

from __future__ import annotations

import io
import json

import jwt
import pytest
from twisted.logger import Logger, LogLevel, LogPublisher

from txvoice import logging as txlog

JWT = jwt.encode({"sub": "alice", "exp": 4102444800}, "k" * 40, algorithm="HS256")
OPAQUE = "Zq3xW8s0nY4VtLr1hB7cKp2mJd9fGe6aQuHo5iTwXyE"  # a session token: no recognisable shape


def setup(levels="txvoice=info", **kwargs):
    out = io.StringIO()
    publisher = LogPublisher(txlog.build_observer(levels, stream=out, **kwargs))
    return out, (lambda ns: Logger(namespace=ns, observer=publisher))


def json_lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


# Levels ---------------------------------------------------------------------------------------


def test_parse_levels():
    assert txlog.parse_levels("txvoice.audio=debug, txvoice=INFO,warn") == {
        "txvoice.audio": LogLevel.debug,
        "txvoice": LogLevel.info,
        "": LogLevel.warn,
    }
    assert txlog.parse_levels({"txvoice": "error"}) == {"txvoice": LogLevel.error}
    assert txlog.parse_levels("") == {}
    with pytest.raises(ValueError):
        txlog.parse_levels("txvoice=loud")


def test_levels_by_prefix():
    out, logger = setup("txvoice.audio=debug,txvoice=info,warn", json_lines=True)
    logger(txlog.AUDIO_VAD).debug("vad debug")
    logger(txlog.AUDIO_RESAMPLER).debug("resampler debug")
    logger(txlog.PIPELINE).debug("pipeline debug")
    logger(txlog.PIPELINE).info("pipeline info")
    logger("autobahn.websocket").info("autobahn info")
    logger("autobahn.websocket").warn("autobahn warn")
    assert [r["message"] for r in json_lines(out)] == [
        "vad debug", "resampler debug", "pipeline info", "autobahn warn"]


def test_debug_mode():
    out, logger = setup("txvoice=warn", debug=True, json_lines=True)
    logger(txlog.SESSION).debug("session debug")
    logger("twisted.web").debug("twisted debug")
    assert [r["message"] for r in json_lines(out)] == ["session debug"]


def test_namespaces_are_under_txvoice():
    assert all(ns.startswith("txvoice.") for ns in txlog.NAMESPACES)
    assert txlog.get_logger(txlog.AUTH).namespace == "txvoice.auth"


def test_a_class_logger_keeps_its_namespace():
    # Twisted's Logger, read from a class, is renamed after the class; ours is not.
    events = []
    publisher = LogPublisher(events.append)

    class Heartbeats:
        log = txlog.NamespaceLogger(namespace=txlog.SESSION, observer=publisher)
        plain = Logger(namespace=txlog.SESSION, observer=publisher)

    beats = Heartbeats()
    beats.log.info("beat {n}", n=1)
    assert events[-1]["log_namespace"] == "txvoice.session" and events[-1]["log_source"] is beats
    assert Heartbeats.log.source is Heartbeats and Heartbeats.log.namespace == "txvoice.session"
    beats.plain.info("beat")
    assert events[-1]["log_namespace"].endswith("Heartbeats")  # what it fixes


def test_level_settings_reach_class_loggers():
    out = io.StringIO()
    observer = txlog.build_observer("txvoice.session=warn,txvoice=info", stream=out, json_lines=True)

    class Reaper:
        log = txlog.NamespaceLogger(namespace=txlog.SESSION, observer=observer)

    Reaper().log.info("reaped quietly")
    Reaper().log.warn("reaped loudly")
    assert [(r["namespace"], r["message"]) for r in json_lines(out)] == [("txvoice.session", "reaped loudly")]


# JSON lines -----------------------------------------------------------------------------------


def test_json_lines_shape():
    out, logger = setup(json_lines=True)
    logger(txlog.NETWORK_WEBSOCKET).info(
        "peer {peer} connected", peer="127.0.0.1", connection_id="c1", message="clash", data=b"\x00ab"
    )
    (record,) = json_lines(out)
    assert record["message"] == "peer 127.0.0.1 connected"
    assert record["level"] == "info"
    assert record["namespace"] == "txvoice.network.websocket"
    assert record["time"].endswith("+00:00")
    assert record["connection_id"] == "c1"
    assert record["_message"] == "clash"
    assert record["data"] == "\x00ab"
    assert out.getvalue().count("\n") == 1


def test_json_lines_failure():
    out, logger = setup(json_lines=True)
    try:
        raise ValueError("bad thing")
    except ValueError:
        logger(txlog.PIPELINE).failure("stage {stage} failed", stage="tts")
    (record,) = json_lines(out)
    assert record["message"] == "stage tts failed"
    assert record["error"]["type"] == "ValueError"
    assert "bad thing" in record["error"]["traceback"]
    assert record["level"] == "critical"


def test_unserialisable_fields():
    out, logger = setup(json_lines=True)
    logger(txlog.PIPELINE).info("x", obj=object(), items={1, 2})
    (record,) = json_lines(out)
    assert record["obj"].startswith("<object object")
    assert record["items"] == [1, 2]


# Redaction ------------------------------------------------------------------------------------


def emit_secrets(logger):
    log = logger(txlog.AUTH)
    log.info("login", token=OPAQUE, password="hunter2", user="alice")
    log.info("headers", headers={"Authorization": f"Bearer {JWT}", "X-Api-Key": OPAQUE,
                                 "Cookie": f"sid={OPAQUE}", "Host": "example"})
    log.info("request {uri}", uri=f"/ws?user=alice&token={OPAQUE}&x=1")
    log.info("raw header {value}", value=f"bearer {OPAQUE}")
    log.info(f"someone used an f-string with Bearer {OPAQUE}")
    log.info("camel", accessToken=OPAQUE, sessionToken=OPAQUE, client_secret=OPAQUE)
    log.info("jwt in text: {text}", text=f"decoded {JWT} badly")
    log.info("nested", ctx={"list": [{"refresh_token": OPAQUE}], "body": f'{{"token": "{OPAQUE}"}}'})
    log.info("bytes", raw=f"Authorization: Bearer {OPAQUE}".encode())

    class Leaky:
        def __str__(self) -> str:
            return f"<Request Authorization: Bearer {OPAQUE}>"

    log.info("object {req}", req=Leaky())
    try:
        raise RuntimeError(f"upstream rejected token={OPAQUE} / {JWT}")
    except RuntimeError:
        log.failure("upstream failure")


@pytest.mark.parametrize("json_lines", [True, False])
def test_secrets_never_reach_output(json_lines):
    out, logger = setup(json_lines=json_lines)
    emit_secrets(logger)
    text = out.getvalue()
    assert text.count("\n") >= 11
    for secret in (OPAQUE, JWT, "hunter2", JWT.split(".")[2]):
        assert secret not in text
    assert "***" in text
    assert "alice" in text  # ordinary fields survive


def test_redaction_keeps_useful_fields():
    out, logger = setup(json_lines=True)
    logger(txlog.SECURITY).info("bucket", tokens=5, token_bucket_rate=3, user_id="u1")
    (record,) = json_lines(out)
    assert record["tokens"] == 5
    assert record["user_id"] == "u1"


def test_redact_text_rules():
    r = txlog.redact_text
    assert r("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer ***"
    assert r("Basic dXNlcjpwYXNz==") == "Basic ***"
    assert r("/ws?token=abc&x=1") == "/ws?token=***&x=1"
    assert r("password=hunter2 ok") == "password=*** ok"
    assert r('{"access_token": "abc", "n": 1}') == '{"access_token": "***", "n": 1}'
    assert r(f"x {JWT} y") == "x *** y"
    assert r("nothing to see") == "nothing to see"


@pytest.mark.parametrize(
    "key, sensitive",
    [
        ("token", True), ("access_token", True), ("accessToken", True), ("Authorization", True),
        ("password", True), ("client_secret", True), ("X-Api-Key", True), ("apiKey", True),
        ("api_key", True), ("set-cookie", True), ("tokens", False), ("user_id", False),
        ("tenant", False), ("private_key_pem", True),
    ],
)
def test_sensitive_keys(key, sensitive):
    assert txlog.is_sensitive_key(key) is sensitive


def test_redact_event_leaves_log_fields():
    event = {"log_namespace": "txvoice.auth", "log_level": LogLevel.info,
             "log_format": "token={token}", "token": "x", "n": 1}
    red = txlog.redact_event(event)
    assert red["token"] == "***"
    assert red["log_level"] is LogLevel.info
    assert red["n"] == 1
    assert event["token"] == "x"  # the original is untouched


def test_start_logging_uses_beginner():
    calls = []

    class Beginner:
        def beginLoggingTo(self, observers, redirectStandardIO=True):
            calls.append((observers, redirectStandardIO))

    observer = txlog.start_logging("txvoice=debug", stream=io.StringIO(), beginner=Beginner())
    assert calls == [([observer], False)]
