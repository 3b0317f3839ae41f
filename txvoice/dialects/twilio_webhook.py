"""
``POST <twilio-path>/voice``: the TwiML webhook that bridges an incoming call to this daemon.

A Twilio phone number's "A call comes in" webhook points here; the answer is TwiML built with the
``twilio`` package (``<Response><Connect><Stream url="wss://.../twilio">``), so the call's audio
comes to the Media Streams dialect.  The caller's ``From``, ``To`` and ``Direction`` go along as
``<Parameter>`` s (the stream's ``customParameters``), so the agent can greet by them.

Requests are checked as Twilio signs them: ``X-Twilio-Signature`` is the HMAC of the full URL
Twilio requested and the POST parameters, keyed with the account's auth token
(``--twilio-auth-token`` / ``TXVOICE_TWILIO_AUTH_TOKEN``), checked with the package's
``RequestValidator``; a mismatch (or a missing header) gets 403.  The daemon usually sits behind
a proxy, so the URL Twilio used is ``--public-url`` plus the request's path and query; without
it the request's own Host header and scheme.  Without an auth token nothing can be checked: the
webhook then answers anyone, and says so in the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse
from twisted.web.resource import Resource

from txvoice.dialects.telephony import input_problem
from txvoice.logging import NamespaceLogger

if TYPE_CHECKING:  # pragma: no cover
    from twisted.web.server import Request

    from txvoice.server.context import VoiceServer

#: Webhook parameters passed on to the stream as customParameters.
FORWARDED = ("From", "To", "Direction", "CallerName")


class _Params(dict[str, list[str]]):
    """POST parameters with repeats, as ``RequestValidator`` reads them (``getall``)."""

    def getall(self, name: str) -> list[str]:
        return list(self[name])


class TwimlWebhook(Resource):
    """Answers Twilio's voice webhook with ``<Connect><Stream>`` to this daemon's Media Streams path."""

    isLeaf = True
    log = NamespaceLogger(namespace="txvoice.network.telephony")

    def __init__(self, server: "VoiceServer") -> None:
        super().__init__()
        self.voice = server
        token = server.config.twilio_auth_token
        self.validator = RequestValidator(token) if token else None
        if self.validator is None:
            self.log.warn("the Twilio webhook {path}/voice is not verified: set --twilio-auth-token",
                          path=server.config.twilio_path)

    def _public_base(self, request: "Request") -> str:
        public = self.voice.config.public_url.rstrip("/")
        if public:
            return public
        host = (request.getHeader(b"host") or b"localhost").decode("latin-1")
        return f"{'https' if request.isSecure() else 'http'}://{host}"

    def stream_url(self, request: "Request") -> str:
        """The WebSocket URL Twilio should stream to: the public base with ws(s) and the Media Streams path."""
        base = urlsplit(self._public_base(request))
        scheme = "wss" if base.scheme in ("https", "wss") else "ws"
        prefix = base.path.rstrip("/")
        return f"{scheme}://{base.netloc}{prefix}/{self.voice.config.twilio_path.strip('/')}"

    def render_POST(self, request: "Request") -> bytes:
        body = ""
        if request.content is not None:
            request.content.seek(0)
            body = request.content.read().decode("utf-8", "replace")
        params = _Params()
        for key, value in parse_qsl(body, keep_blank_values=True):
            params.setdefault(key, []).append(value)
        if self.validator is not None:
            url = self._public_base(request) + request.uri.decode("latin-1")
            signature = (request.getHeader(b"x-twilio-signature") or b"").decode("latin-1")
            if not signature or not self.validator.validate(url, params, signature):
                input_problem(self.voice, None, "twilio", "twilio_signature_mismatch",
                              "webhook request refused: X-Twilio-Signature does not match", url=url,
                              call_sid=_first(params, "CallSid"))
                request.setResponseCode(403)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"X-Twilio-Signature does not match\n"
        response = VoiceResponse()
        connect = Connect()
        stream = connect.stream(url=self.stream_url(request))
        for name in FORWARDED:
            value = _first(params, name)
            if value:
                stream.parameter(name=name, value=value)
        response.append(connect)
        self.log.info("twilio call {call_sid} from {caller}: streaming to {url}", call_sid=_first(params, "CallSid"),
                      caller=_first(params, "From"), url=self.stream_url(request))
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return str(response).encode("utf-8")

    def render_GET(self, request: "Request") -> bytes:
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        return b"POST only: Twilio's voice webhook\n"


def _first(params: dict[str, list[str]], name: str) -> Any:
    values = params.get(name)
    return values[0] if values else None
