"""
``txvoice.v1``'s ``connect``: the greeting, or the resume of an earlier session from its
``resume_token`` (its user, conversation, acknowledged message ids and reliable-message log; from
the shared store under ``--redis``, so on any node).  A handler of
:class:`~txvoice.dialects.native.NativeVoiceProtocol`, registered there by message type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txvoice.protocol.envelope import Envelope
from txvoice.session.resume import AckedIds, ResumeState
from txvoice.session.session import Session, SessionState

if TYPE_CHECKING:  # pragma: no cover
    from txvoice.server.context import VoiceServer


class ResumeConnection(Protocol):
    """What ``connect`` needs of the native dialect's protocol."""

    server: "VoiceServer"
    session: Session | None
    wslog: Logger
    _acked: AckedIds
    _log_id: str | None

    def greeting(self) -> dict[str, Any]: ...

    def reply(self, env: Envelope, msg_type: str, data: dict[str, Any]) -> None: ...

    def _hold(self, d: "Deferred[Any]") -> None: ...


def on_connect(self: ResumeConnection, env: Envelope) -> None:
    session = self.session
    assert session is not None
    if "client" in env.data:
        session.attributes["client"] = env.data["client"]
    token = env.data.get("resume_token")
    if token is None:
        self.reply(env, "connect", self.greeting())
        return
    d: Deferred[Any] = maybeDeferred(self.server.resume_store.take, token)
    d.addErrback(lambda f: _unavailable(self, f))
    d.addCallback(lambda state: _resume(self, state, env))
    if not d.called:
        self._hold(d)  # what follows the resume (re-sent reliable messages) waits for it

def _unavailable(self: ResumeConnection, failure: Failure) -> None:
    self.wslog.warn("resume state could not be read: {error}", error=failure.getErrorMessage())
    return None

def _resume(self: ResumeConnection, state: ResumeState | None, env: Envelope) -> None:
    session = self.session
    if session is None or session.state is SessionState.CLOSED:
        return
    greeting = self.greeting()
    if state is None:
        greeting.update(resumed=False, resume_error="unknown_or_expired_token")
    elif state.user_id is not None and self.server.admission.authenticator is not None and not (
        session.is_authenticated and (session.user_id, session.tenant) == (state.user_id, state.tenant)
    ):
        # A resume token is no credential: with keys configured, an authenticated user's
        # session is taken over only by a connection already authenticated as that user
        # (the token is used up).
        greeting.update(resumed=False, resume_error="authentication_required")
    else:
        session.identify(user_id=state.user_id, tenant=state.tenant, conversation_id=state.conversation_id)
        self._acked = state.acked
        if state.log_id is not None:
            self._log_id = state.log_id
            self.server.resume_store.opened(session, state.log_id)
        self.server.stats.resumes += 1
        greeting.update(resumed=True, previous_session_id=state.session_id)
    self.reply(env, "connect", greeting)


HANDLERS: dict[str, Callable[[ResumeConnection, Envelope], None]] = {"connect": on_connect}
