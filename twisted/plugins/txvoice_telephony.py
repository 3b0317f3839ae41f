"""
txvoice's telephony bridges, as dialect plugins (one line each, like ``txvoice_dialects.py``).

A plugin module of its own rather than two more lines in ``txvoice_dialects.py``: Twisted finds a
plugin module by name in the first ``twisted/plugins`` directory that has it, so a line added to
an installed module is invisible to a daemon run from a source tree until txvoice is reinstalled;
a new module is found from the source tree at once.
"""

from txvoice.dialects.registry import DialectFactory

twilio = DialectFactory("twilio", "txvoice.dialects.twilio:endpoints",
                        "Twilio Media Streams and its TwiML webhook (--twilio-path)")
audiosocket = DialectFactory("audiosocket", "txvoice.dialects.audiosocket:endpoints",
                             "Asterisk AudioSocket over TCP (--audiosocket)", services="txvoice.dialects.audiosocket:services")
