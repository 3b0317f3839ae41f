"""
Where a call session (S4's ``callId``) is known: which user and tenant own it, which node serves
it, what it was started with -- so a call dropped on one node is resumed on another.

The realtime dialect keeps each call's channel, sink and queue in its node's call table; this
store is what a node asks when a ``session_start`` names a call its table does not hold.
:class:`MemoryCallStore` (the default, one process) knows no other node: such a call is new.  A
Redis store (``txvoice.scaleout.calls``) fills the same :class:`ICallStore`: :meth:`claim` makes
this node the call's owner (answering the previous owner's record), :meth:`handoff` asks that node
to let the call go -- finish its turn in progress into the offline queue, close its connection
with 4005 -- and waits until it did, bounded.  No method is called per audio frame.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from txvoice.errors import VoiceError


class CallInUse(VoiceError):
    """The call id is held by another user (or tenant)."""

    code = "call_in_use"


@dataclass(frozen=True)
class CallRecord:
    """What the cluster knows of a call: enough to resume it on any node."""

    call_id: str
    user_id: str
    tenant: str | None
    node: str
    epoch: str
    started_at: float
    #: session_start's audio settings as they were (fallback format, stream options, chunk limit).
    options: dict[str, Any] = field(default_factory=dict)
    #: How many times it has been resumed, on any node.
    resumes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "user_id": self.user_id, "tenant": self.tenant, "node": self.node,
                "epoch": self.epoch, "started_at": self.started_at, "options": self.options,
                "resumes": self.resumes}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "CallRecord":
        return cls(str(doc["call_id"]), str(doc["user_id"]), doc.get("tenant"), str(doc["node"]),
                   str(doc["epoch"]), float(doc.get("started_at") or 0.0), dict(doc.get("options") or {}),
                   int(doc.get("resumes") or 0))


def new_epoch() -> str:
    """A fresh owner generation: each claim of a call has its own."""
    return uuid.uuid4().hex[:16]


#: What a node does when another claims one of its calls: let it go; the Deferred fires once the
#: call's output is in the offline queue (the new owner takes it then).
#: Longest a new owner waits for the old node to let a call go (its reply being finished).
HANDOFF_TIMEOUT = 10.0

TakeoverHandler = Callable[[str, str], "defer.Deferred[None]"]


class ICallStore(Interface):
    """The calls of a cluster, by ``callId`` (see the module docstring)."""

    node_id = Attribute("This node's name (the owner it records).")
    handoff_timeout = Attribute("Longest (s) a new owner waits for the old node to let a call go.")

    def claim(record: CallRecord) -> "defer.Deferred[CallRecord | None]":
        """
        Record ``record`` (this node, a new epoch) as the call's owner; fires with the previous
        record (None: a new call), or fails with :class:`CallInUse` when another user holds it
        (nothing changed then).
        """

    def handoff(previous: CallRecord, epoch: str) -> "defer.Deferred[bool]":
        """
        Ask ``previous.node`` to let the call go to this node's claim ``epoch``; True once it did,
        False when no such node answers (gone, or not within the store's timeout).
        """

    def forget(call_id: str, epoch: str) -> "defer.Deferred[bool]":
        """The call ended here: drop its record if it is still this claim's; True when it was."""

    def serve(handler: TakeoverHandler) -> None:
        """Call ``handler(call_id, new_node)`` when another node claims a call this node owns."""

    def queued(address: str) -> None:
        """
        Messages were just queued under ``address`` (a user's) because this node serves nobody
        there: tell the other nodes, whichever serves it live takes the queue and delivers them.
        """

    def on_queued(handler: Callable[[str], None]) -> None:
        """Call ``handler(address)`` when another node queued messages under ``address``."""

    def holder(call_id: str) -> "defer.Deferred[str | None]":
        """The node holding the call in the store (None: no such call, or this store knows no other node)."""


@implementer(ICallStore)
class MemoryCallStore:
    """One process: every call the table does not hold is new; there is no other node."""

    node_id = "local"
    handoff_timeout = HANDOFF_TIMEOUT

    def claim(self, record: CallRecord) -> "defer.Deferred[CallRecord | None]":
        return defer.succeed(None)

    def handoff(self, previous: CallRecord, epoch: str) -> "defer.Deferred[bool]":
        return defer.succeed(False)

    def forget(self, call_id: str, epoch: str) -> "defer.Deferred[bool]":
        return defer.succeed(True)

    def serve(self, handler: TakeoverHandler) -> None:
        """No other node ever claims a call."""

    def queued(self, address: str) -> None:
        """No other node to tell."""

    def on_queued(self, handler: Callable[[str], None]) -> None:
        """No other node ever queues."""

    def holder(self, call_id: str) -> "defer.Deferred[str | None]":
        return defer.succeed(None)
