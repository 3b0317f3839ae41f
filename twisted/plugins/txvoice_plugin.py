"""twistd plugin: ``twistd txvoice``.  (No __init__.py in this directory: it would hide Twisted's own.)"""

from twisted.application.service import ServiceMaker

txvoice = ServiceMaker(
    "txvoice",
    "txvoice.tap",
    "Real-time voice over WebSocket (txvoice.v1 and dialects)",
    "txvoice",
)
