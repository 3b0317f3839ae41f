"""
txvoice's wire dialects, as Twisted plugins: the daemon mounts every dialect found here (and in any
other package's ``twisted/plugins/``) whose path option is set.

Each names its module's ``endpoints`` as a string, so listing plugins imports no dialect.  A new
dialect is one module in ``txvoice/dialects/`` and one line here.
"""

from txvoice.dialects.registry import DialectFactory

native = DialectFactory("native", "txvoice.dialects.native:endpoints",
                        "txvoice.v1: JSON control envelopes and binary audio (--path)")
vocal = DialectFactory("vocal", "txvoice.dialects.vocal:endpoints",
                       "S2 Vocal: binary chunks, one ack each (--vocal-path)")
echo = DialectFactory("echo", "txvoice.dialects.echo:endpoints",
                      "Plain echo on the full stack, for the Autobahn testsuite (--echo-path)")
voicews = DialectFactory("voicews", "txvoice.dialects.voicews:endpoints",
                         "S3 raw voice WebSocket: VoiceStreamMessage JSON, binary 20 ms frames, JWT on the upgrade (--voicews-path)")
socketio = DialectFactory("socketio", "txvoice.dialects.socketio_voice:endpoints",
                          "S3 Socket.IO, namespace /voice, polling and WebSocket (--socketio-path)")
realtime = DialectFactory("realtime", "txvoice.dialects.realtime:endpoints",
                          "S4 realtime: call sessions, session_start, sniffed binary audio, server heartbeats (--realtime-path)")
