"""The WebSocket server: the shared protocol base, factories, the HTTP site and the server context."""
