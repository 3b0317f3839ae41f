"""txvoice: real-time voice over WebSocket on Twisted and Autobahn."""

__version__ = "0.1.0"

__all__ = ["__version__"]
