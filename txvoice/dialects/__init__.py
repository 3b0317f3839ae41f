"""
Dialects: the wire protocols txvoice speaks, each a thin adapter onto the same sessions, voice
channel and pipeline.  ``native`` is txvoice.v1; ``echo`` is a plain echo for the Autobahn testsuite.
"""
