"""
Seed S3's Socket.IO server at ``/socket.io`` (``--socketio-path``), namespace ``/voice``, on Twisted.

The wire format and the session semantics are python-socketio's and python-engineio's, not ours:
their ``threading`` mode is hosted here as a WSGI application in a thread pool of its own
(``twisted.web.wsgi``) for HTTP long-polling, and the WebSocket transport is an Autobahn protocol
handed to Engine.IO through its ``websocket`` driver slot (:class:`_EngineIOWebSocket`), so both
transports, the polling-to-WebSocket upgrade, pings and acks behave as ``socket.io-client``
expects.  Each open long-poll request and each Socket.IO WebSocket holds one pool thread
(``--socketio-threads``); the voice work itself happens on the reactor, as for every dialect.

Events (see ``doc/dialects.md``): the client sends ``voice:start`` (answered ``voice:session_ready
{sessionId}``; ``{sessionId}`` in it joins a ``/voice-ws`` session), ``voice:audio_data`` (a binary
attachment), ``voice:end``; every server message of ``/voice-ws`` comes as ``voice:<type>`` with the
same ``{type, data, metadata}`` object, response audio as ``voice:audio_data`` (bytes) when no raw
socket carries it.  Acks are answered with ``{ok, sessionId}`` or ``{ok: false, error, code}``.
"""

from __future__ import annotations

import queue
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, cast

import socketio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.wsgi import WSGIResource

from txvoice.errors import VoiceError
from txvoice.security.iplimits import ConnectionRefused, client_ip
from txvoice.security.jwt_auth import extract_token
from txvoice.server.compression import apply_compression_level
from txvoice.server.factory import _accept_deflate
from txvoice.server.web import UpgradeOrResource
from txvoice.session.session import Session, SessionState
from txvoice.dialects.s3session import Coordinator, UnifiedSession
from txvoice.dialects.voicews import principal_attributes, require_token

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
    from twisted.web.resource import IResource

    from txvoice.server.context import VoiceServer

    class _Reactor(IReactorCore, IReactorTime, IReactorThreads):
        """What this module asks of the global reactor (threads, time, shutdown triggers)."""

#: Twisted declares ``twisted.internet.reactor`` as its common interfaces only, without
#: IReactorThreads / IReactorFromThreads, although every reactor it installs provides them.
_reactor = cast("_Reactor", reactor)

NAMESPACE = "/voice"
log = Logger(namespace="txvoice.network.socketio")


class _EngineIOWebSocket:
    """
    Engine.IO's ``websocket`` driver (the interface of its ``SimpleWebSocketWSGI``) over an Autobahn
    connection: ``wait`` / ``send`` / ``close`` are called on a pool thread.
    """

    def __init__(self, handler: Any, server: Any, **kwargs: Any) -> None:
        self.app = handler
        self.conn: "_EngineIOProtocol | None" = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.conn = environ["txvoice.websocket"]
        return self.app(self)

    def _connection(self) -> "_EngineIOProtocol":
        conn = self.conn
        assert conn is not None, "Engine.IO drives the socket only after calling the driver"
        return conn

    def wait(self) -> str | bytes | None:
        return self._connection().inbox.get()

    def send(self, message: str | bytes) -> None:
        conn = self._connection()
        if conn.gone:
            raise OSError("the WebSocket is closed")
        _reactor.callFromThread(conn.sendFromPool, message)

    def close(self) -> None:
        _reactor.callFromThread(self._connection().closeFromPool)


class _EngineIOProtocol(WebSocketServerProtocol):
    """The WebSocket transport of Engine.IO: frames in go to a queue that Engine.IO's thread reads."""

    gone = False

    def onConnect(self, request: Any) -> None:
        bridge: SocketIOVoice = self.factory.bridge
        if bridge.server.shutting_down:
            raise ConnectionDeny(503, "server shutting down")
        self.inbox: queue.Queue[str | bytes | None] = queue.Queue()
        headers = request.headers
        assert self.transport is not None
        self.environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": request.path,
            "QUERY_STRING": urllib.parse.urlencode(request.params, doseq=True),
            "REMOTE_ADDR": getattr(self.transport.getPeer(), "host", ""),
            "HTTP_HOST": headers.get("host", ""),
            "HTTP_UPGRADE": "websocket",
            "HTTP_CONNECTION": "Upgrade",
            "wsgi.url_scheme": "http",
            "txvoice.websocket": self,
            "txvoice.headers": dict(headers),
        }
        for name in ("origin", "authorization", "user-agent", "x-forwarded-for"):
            if name in headers:
                self.environ["HTTP_" + name.upper().replace("-", "_")] = headers[name]

    def onOpen(self) -> None:
        bridge: SocketIOVoice = self.factory.bridge
        apply_compression_level(self._perMessageCompress, bridge.server.config.compression_level)
        bridge.connections.add(self)
        d = deferToThreadPool(_reactor, bridge.pool, bridge.sio.handle_request, self.environ, _ignore_response)
        d.addErrback(lambda f: log.failure("Engine.IO WebSocket handler failed", f))
        d.addBoth(lambda _: self.closeFromPool())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.inbox.put(payload if isBinary else payload.decode("utf-8", "replace"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.gone = True
        self.factory.bridge.connections.discard(self)
        inbox = getattr(self, "inbox", None)
        if inbox is not None:
            inbox.put(None)

    def sendFromPool(self, message: str | bytes) -> None:
        if self.state == self.STATE_OPEN:
            binary = isinstance(message, bytes)
            data = message if isinstance(message, bytes) else message.encode("utf-8")
            self.sendMessage(data, binary,
                             doNotCompress=binary or len(data) < self.factory.bridge.server.config.compression_threshold)

    def closeFromPool(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)


def _ignore_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    """Engine.IO answers a refused upgrade through start_response; the socket is closed after it."""


class _SocketIOTransport:
    """A Socket.IO connection as a transport of a unified session (emits happen on the reactor)."""

    s3_transport = "socketio"

    def __init__(self, bridge: "SocketIOVoice", sid: str) -> None:
        self.bridge, self.sid = bridge, sid

    def _emit(self, event: str, data: Any) -> None:
        try:
            self.bridge.sio.emit(event, data, to=self.sid, namespace=NAMESPACE)
        except Exception:  # the client went away meanwhile
            log.debug("emit {event} to a gone Socket.IO client", event=event)

    def sendS3(self, message: dict[str, Any]) -> None:
        self.bridge.coordinator.count("socketio", "out", "text")
        self._emit("voice:" + message["type"], message)

    def sendS3Audio(self, chunk: bytes) -> None:
        self.bridge.coordinator.count("socketio", "out", "binary")
        self._emit("voice:audio_data", bytes(chunk))


class _Client:
    """What the reactor knows of one Socket.IO connection."""

    def __init__(self, sid: str, ip: str, lease: Any, principal: Any, peer: str) -> None:
        self.sid, self.ip, self.lease, self.principal, self.peer = sid, ip, lease, principal, peer
        self.unified: UnifiedSession | None = None
        self.owned: Session | None = None  # the session this connection opened (and closes)
        self.transport: _SocketIOTransport | None = None


class _DaemonThread(threading.Thread):
    """The pool's threads: daemon threads, so a stuck one cannot keep the process up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, daemon=True, **kwargs)


class SocketIOVoice:
    """python-socketio's server, namespace ``/voice``, bridged to txvoice's sessions."""

    def __init__(self, server: "VoiceServer") -> None:
        self.server = server
        config = server.config
        origins = [o.strip() for o in config.allowed_origins.split(",") if o.strip()] or "*"
        self.sio = socketio.Server(
            async_mode="threading", async_handlers=False, cors_allowed_origins=origins,
            ping_interval=25, ping_timeout=60,  # S3's pingInterval / pingTimeout
            max_http_buffer_size=config.max_message_size, logger=False, engineio_logger=False,
            http_compression=True, compression_threshold=config.compression_threshold,
        )
        # Engine.IO's threading mode, with its WebSocket transport on Autobahn instead of simple-websocket.
        self.sio.eio._async = {**self.sio.eio._async, "websocket": _EngineIOWebSocket}
        self.pool = ThreadPool(minthreads=1, maxthreads=max(config.socketio_threads, 2), name="txvoice-socketio")
        self.pool.threadFactory = _DaemonThread
        self.connections: set[_EngineIOProtocol] = set()
        self.clients: dict[str, _Client] = {}
        self.coordinator = Coordinator.of(server)
        sio = self.sio
        sio.on("connect", self._connect, namespace=NAMESPACE)
        sio.on("disconnect", self._disconnect, namespace=NAMESPACE)
        sio.on("voice:start", self._threaded(self.start), namespace=NAMESPACE)
        sio.on("voice:audio_data", self._audioData, namespace=NAMESPACE)
        sio.on("voice:end", self._threaded(self.end), namespace=NAMESPACE)
        sio.on("*", lambda event, sid, *args: blockingCallFromThread(_reactor, self.unknown, event, sid),
               namespace=NAMESPACE)

    # lifecycle (reactor)

    def startPool(self) -> None:
        self.pool.start()
        _reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def stop(self, grace: float = 3.0) -> Deferred[None]:
        """
        Close every Engine.IO socket without waiting (ending long polls and WebSocket handlers,
        which need the reactor to finish), then stop the threads once they are idle (at most
        ``grace`` seconds; they are daemon threads, so a stuck one cannot keep the process up).
        """
        for socket in list(self.sio.eio.sockets.values()):
            try:
                socket.close(wait=False)
            except Exception:
                log.failure("closing a Socket.IO client")
        for conn in list(self.connections):
            conn.inbox.put(None)
            conn.closeFromPool()
        if self.sio.eio.service_task_event is not None:
            self.sio.eio.service_task_event.set()
        done: Deferred[None] = Deferred()
        deadline = _reactor.seconds() + grace

        def check() -> None:
            if self.pool.working and _reactor.seconds() < deadline:
                _reactor.callLater(0.05, check)
                return
            if not self.pool.working:
                self.pool.stop()
            done.callback(None)

        check()
        return done

    # Socket.IO handlers (pool threads): hop to the reactor

    def _threaded(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def handler(sid: str, *args: Any) -> Any:
            return blockingCallFromThread(_reactor, func, sid, *args)
        return handler

    def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not token:
            headers = environ.get("txvoice.headers") or {"authorization": environ.get("HTTP_AUTHORIZATION", "")}
            token = extract_token(headers, urllib.parse.parse_qs(environ.get("QUERY_STRING", "")))
        try:
            blockingCallFromThread(_reactor, self.admit, sid, environ, token)
        except ConnectionDeny as deny:
            raise socketio.exceptions.ConnectionRefusedError(
                deny.reason, {"code": deny.code}) from None

    def _audioData(self, sid: str, data: Any = None, *rest: Any) -> Any:
        chunk = data.get("data") if isinstance(data, dict) else data
        if isinstance(chunk, list):
            chunk = bytes(chunk)
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            return blockingCallFromThread(_reactor, self.refuse, sid, VoiceError(
                "voice:audio_data needs binary audio (an ArrayBuffer, Buffer or {data: ArrayBuffer})",
                code="invalid_audio"))
        _reactor.callFromThread(self.audio, sid, bytes(chunk))
        return {"ok": True, "bytes": len(chunk)}

    def _disconnect(self, sid: str, reason: Any = None) -> None:
        _reactor.callFromThread(self.disconnected, sid)

    # the reactor's side

    def admit(self, sid: str, environ: dict[str, Any], token: str | None) -> Any:
        server = self.server
        if server.shutting_down:
            raise ConnectionDeny(503, "server shutting down")
        require_token(server, token, "/socket.io")
        admission = server.admission
        ip = client_ip(environ.get("REMOTE_ADDR", ""), environ.get("txvoice.headers") or {}, admission.trusted_proxies)
        try:
            lease = admission.limiter.acquire(ip)
        except ConnectionRefused as e:
            server.record_refused(e.code)
            raise ConnectionDeny(e.http_status, e.message) from None
        peer = f"tcp4:{environ.get('REMOTE_ADDR', '')}:{environ.get('REMOTE_PORT', '')}"

        def accepted(principal: Any) -> None:
            self.clients[sid] = _Client(sid, ip, lease, principal, peer)

        def rejected(failure: Any) -> None:
            lease.release()
            server.record_refused("auth_failed")
            code = getattr(failure.value, "code", "auth_failed")
            raise ConnectionDeny(401, f"{code}: authentication failed")

        if token is None:  # --voicews-allow-anonymous
            accepted(None)
            return None
        return admission.authenticate(token).addCallbacks(accepted, rejected)

    def _ack_error(self, sid: str, error: VoiceError) -> dict[str, Any]:
        client = self.clients.get(sid)
        if client is not None and client.unified is not None:
            client.unified.error(error, to=client.transport)
        else:
            self.server.record_error(error.code)
            self.sio.emit("voice:error", {"type": "error", "data": None,
                                          "metadata": {"error": error.message, "code": error.code}},
                          to=sid, namespace=NAMESPACE)
        return {"ok": False, "error": error.message, "code": error.code}

    def refuse(self, sid: str, error: VoiceError) -> dict[str, Any]:
        return self._ack_error(sid, error)

    def start(self, sid: str, data: Any = None, *rest: Any) -> dict[str, Any]:
        """``voice:start {siteId?, locale?, sessionId?, sampleRate?, channels?, codec?}``."""
        client = self.clients.get(sid)
        self.coordinator.count("socketio", "in", "text")
        if client is None:
            return {"ok": False, "error": "not connected", "code": "not_connected"}
        data = data if isinstance(data, dict) else {}
        try:
            unified = client.unified
            if unified is None:
                unified = self._open(client, data)
            if any(k in data for k in ("sampleRate", "channels", "codec", "format", "encoding")):
                unified.voice_start(data)
        except VoiceError as e:
            return self._ack_error(sid, e)
        ready = {"sessionId": unified.id, "joined": unified.session is not client.owned,
                 "transports": sorted(unified.transports)}
        self.sio.emit("voice:session_ready", ready, to=sid, namespace=NAMESPACE)
        return {"ok": True, **ready}

    def _open(self, client: _Client, data: dict[str, Any]) -> UnifiedSession:
        server = self.server
        joined = Coordinator.of(server).get(data.get("sessionId"))
        if data.get("sessionId") and joined is None:
            raise VoiceError(f"no session {data['sessionId']!r} to join", code="unknown_session")
        client.transport = _SocketIOTransport(self, client.sid)
        if joined is None:
            session = client.owned = Session(peer=client.peer, dialect="socketio")
            session.ip = client.ip
            session.attributes["socketio_sid"] = client.sid
            session.last_activity = server.clock.seconds()
            session.close = lambda code, reason, sid=client.sid: self._closeClient(sid)
            if client.principal is not None:
                session.user_id, session.tenant = client.principal.user_id, client.principal.tenant
            session.transition(SessionState.AUTHENTICATED)
            principal_attributes(session, client.principal)
            if data.get("siteId") is not None:
                session.attributes.setdefault("site_id", str(data["siteId"]))
            if data.get("locale") is not None:
                session.attributes["locale"] = str(data["locale"])
            joined = UnifiedSession(server, session)
            Coordinator.of(server).add(joined)
            server.registry.add(session)
            server.connection_opened(session)
        client.unified = joined
        joined.attach(client.transport)
        return joined

    def audio(self, sid: str, chunk: bytes) -> None:
        client = self.clients.get(sid)
        if client is None:
            return
        self.coordinator.count("socketio", "in", "binary")
        if client.unified is None:
            self._ack_error(sid, VoiceError("send voice:start first", code="no_session"))
            return
        session = client.unified.session
        session.counters.binary_in += 1
        session.counters.binary_bytes_in += len(chunk)
        session.last_activity = self.server.clock.seconds()
        try:
            client.unified.audio_in(chunk)
        except VoiceError as e:
            client.unified.error(e, to=client.transport)

    def end(self, sid: str, *args: Any) -> dict[str, Any]:
        client = self.clients.get(sid)
        if client is None or client.unified is None:
            return {"ok": False, "error": "no voice session", "code": "no_session"}
        session_id = client.unified.id
        client.unified.voice_end()
        self._leave(client)
        return {"ok": True, "sessionId": session_id}

    def unknown(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        return self._ack_error(sid, VoiceError(f"unknown event {event!r}", code="unknown_type"))

    def _leave(self, client: _Client) -> None:
        """This connection leaves its session; the session it opened closes."""
        unified, client.unified = client.unified, None
        if unified is None:
            return
        assert client.transport is not None  # always, with a session (_open makes it first)
        unified.detach(client.transport)
        owned, client.owned = client.owned, None
        if owned is not None and owned.state is not SessionState.CLOSED:
            Coordinator.of(self.server).remove(unified)
            unified.close()
            owned.state = SessionState.CLOSED
            if self.server.registry.get(owned.id) is owned:
                self.server.registry.remove(owned)
                self.server.connection_closed(owned)

    def disconnected(self, sid: str) -> None:
        client = self.clients.pop(sid, None)
        if client is None:
            return
        self._leave(client)
        client.lease.release()

    def _closeClient(self, sid: str) -> None:
        """``session.close`` (reaper, shutdown): disconnect the Socket.IO client."""
        client = self.clients.get(sid)
        if client is not None:
            self._leave(client)
        _reactor.callInThread(self._disconnectQuietly, sid)

    def _disconnectQuietly(self, sid: str) -> None:
        try:
            self.sio.disconnect(sid, namespace=NAMESPACE)
        except Exception:
            pass


class _EngineIOFactory(WebSocketServerFactory):
    """Autobahn's factory of the Engine.IO sockets, knowing the bridge they serve."""

    bridge: SocketIOVoice


def endpoints(server: "VoiceServer") -> dict[str, "IResource"]:
    """S3's Socket.IO at ``--socketio-path``; off when that is empty (the dialect registry calls this)."""
    path = server.config.socketio_path
    if not path:
        return {}
    bridge = SocketIOVoice(server)
    factory = _EngineIOFactory(server=f"{server.config.server_name}/{server.version}", reactor=server.clock)
    factory.protocol = _EngineIOProtocol
    factory.bridge = bridge
    options: dict[str, Any] = {"maxMessagePayloadSize": server.config.max_message_hard_limit,
                               "openHandshakeTimeout": server.config.open_handshake_timeout, "autoPingInterval": 0}
    if server.config.voicews_compression:
        options["perMessageCompressionAccept"] = _accept_deflate
    factory.setProtocolOptions(**options)
    bridge.startPool()
    polling = WSGIResource(_reactor, bridge.pool, bridge.sio.handle_request)
    return {path: UpgradeOrResource(WebSocketResource(factory), polling)}
