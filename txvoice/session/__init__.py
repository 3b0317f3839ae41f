"""Sessions: one per connection, whatever dialect it speaks, kept in a registry."""

from txvoice.session.registry import ISessionRegistry, LocalSessionRegistry
from txvoice.session.session import Session, SessionState

__all__ = ["ISessionRegistry", "LocalSessionRegistry", "Session", "SessionState"]
