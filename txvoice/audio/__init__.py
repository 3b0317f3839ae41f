"""
The audio engine: codecs, resampling, framing, voice activity detection and the bounded worker
pool that keeps all of it off the reactor thread.
"""
