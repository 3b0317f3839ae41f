"""
``txvoice.v1``'s conversation messages: ``conversation_start`` (joins or makes one; shared with
the other nodes under ``--redis``, and then acknowledged once it is loaded), ``conversation_end``
and ``conversation_state``.  Handlers of :class:`~txvoice.dialects.native.NativeVoiceProtocol`,
registered there by message type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txvoice.errors import StateError
from txvoice.protocol.envelope import Envelope
from txvoice.session.session import Session

if TYPE_CHECKING:  # pragma: no cover
    from txvoice.server.context import VoiceServer


class ConversationConnection(Protocol):
    """What the conversation handlers need of the native dialect's protocol."""

    server: "VoiceServer"
    session: Session | None
    wslog: Logger
    #: Set by a handler whose reliable message is acknowledged later, once it has been applied.
    _ack_later: bool

    def reply(self, env: Envelope, msg_type: str, data: dict[str, Any]) -> None: ...

    def _ack(self, env: Envelope) -> None: ...

    def _hold(self, d: "Deferred[Any]") -> None: ...

    def _resumableChanged(self) -> None: ...


def on_conversation_start(self: ConversationConnection, env: Envelope) -> None:
    session = self.session
    assert session is not None
    cid = env.data.get("conversation_id") or env.conversation_id

    def loaded(conv: Any) -> None:
        if "metadata" in env.data:
            conv.metadata.update(env.data["metadata"])
        self.server.save_conversation(conv)  # shared (--redis): known to the other nodes from now
        session.identify(conversation_id=conv.id)
        self._resumableChanged()
        self.reply(env, "conversation_start", conv.as_dict())
        if deferred_ack:
            self._ack(env)  # applied only now: its ack follows

    deferred_ack = False
    if self.server.conversation_store is None:
        loaded(self.server.conversation(cid))  # in this process only: at once, errors answered as before
        return
    self._ack_later = deferred_ack = True  # the ack waits for the shared state (loaded, above)
    d = self.server.load_conversation(cid)  # shared with the other nodes under --redis
    d.addCallback(loaded).addErrback(lambda f: self.wslog.failure("conversation_start failed", f))
    if not d.called:
        self._hold(d)

def current_conversation(self: ConversationConnection, env: Envelope) -> str:
    session = self.session
    assert session is not None
    cid = env.data.get("conversation_id") or env.conversation_id
    if session.conversation_id is None:
        raise StateError("no conversation is active; send conversation_start", code="no_active_conversation")
    if cid is not None and cid != session.conversation_id:
        raise StateError(f"conversation {cid!r} is not this session's conversation", code="unknown_conversation")
    return session.conversation_id

def on_conversation_end(self: ConversationConnection, env: Envelope) -> None:
    session = self.session
    assert session is not None
    cid = current_conversation(self, env)
    conv = self.server.conversation(cid)
    self.reply(env, "conversation_end", {**conv.as_dict(), "state": "ended"})
    session.identify(conversation_id=None)
    self._resumableChanged()
    if not self.server.registry.by_conversation(cid):
        self.server.conversations.pop(cid, None)

def on_conversation_state(self: ConversationConnection, env: Envelope) -> None:
    session = self.session
    assert session is not None
    if session.conversation_id is None:
        self.reply(env, "conversation_state", {"conversation_id": None, "state": "none"})
        return
    cid = current_conversation(self, env)
    d = self.server.load_conversation(cid)
    d.addCallback(lambda conv: self.reply(env, "conversation_state", {**conv.as_dict(), "state": "active"}))
    if not d.called:
        self._hold(d)


#: Message type -> handler, merged into the protocol's handler table.
HANDLERS: dict[str, Callable[[ConversationConnection, Envelope], None]] = {
    "conversation_start": on_conversation_start,
    "conversation_end": on_conversation_end,
    "conversation_state": on_conversation_state,
}
