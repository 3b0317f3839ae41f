"""Event delivery: server-originated events addressed to a session, a conversation, a user or everyone."""

from txvoice.events.bus import IEventBus, IEventSubscriber, LocalEventBus

__all__ = ["IEventBus", "IEventSubscriber", "LocalEventBus"]
