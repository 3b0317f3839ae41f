"""
Extension points of the audio engine.

Decoders and encoders run on the audio worker pool, never on the reactor thread.  One instance
serves one stream, so an implementation may keep per-stream state without locks.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IAudioDecoder(Interface):
    """Turns the packets of one stream into signed 16-bit PCM."""

    format = Attribute("The txvoice.audio.format.AudioFormat this decoder was made for.")
    output_rate = Attribute("Sample rate (Hz) of the PCM that decode() returns.")
    output_channels = Attribute("Channel count of the PCM that decode() returns (interleaved).")

    def decode(data: bytes, sequence: int | None = None):
        """
        Decode one chunk as the client sent it; return a 1-D ``numpy.int16`` array of
        interleaved samples (possibly empty, e.g. while a container header is read).

        The array belongs to the caller: later calls never write to it (decoders reuse their
        scratch buffers and copy out only the valid samples).  It may be read-only (raw PCM is a
        zero-copy view of ``data``), so copy it before modifying it in place.  Output is always
        whole frames: ``len(result) % output_channels == 0``.

        ``sequence`` is the client's frame sequence number when it sends one; a codec with packet
        loss concealment uses gaps in it to conceal lost frames.  Raise
        :class:`txvoice.errors.AudioError` (with a specific ``code``) for input that cannot be
        decoded; the stream goes on with the next chunk.
        """

    def flush():
        """
        Return whatever PCM is still buffered at the end of the stream (may be empty).  Raise
        :class:`txvoice.errors.AudioError` ``truncated_frame`` when the stream ended inside a
        frame or a header; the decoder is reset either way.
        """


class IAudioEncoder(Interface):
    """Turns signed 16-bit PCM into packets of one output stream."""

    format = Attribute("The txvoice.audio.format.AudioFormat this encoder produces.")

    def encode(pcm) -> list:
        """
        Encode a 1-D ``numpy.int16`` array of interleaved samples at ``format.sample_rate``;
        return the list of complete packets (bytes) it yields; partial frames are kept until more
        PCM or flush().
        """

    def flush() -> list:
        """Pad and encode what is buffered; return the final packets."""
