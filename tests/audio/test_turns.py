"""Tests for txvoice.audio.turns: turn boundaries in each streaming mode."""

from __future__ import annotations

import numpy as np
import pytest

import signal_speech as speech
from txvoice.audio.turns import TurnDetector, TurnEnded, TurnMode, TurnSettings, TurnStarted
from txvoice.errors import ProtocolError, StateError

END_TOLERANCE_MS = 40


def feed(detector: TurnDetector, pcm: np.ndarray, finish: bool = True) -> list:
    """Push every whole frame of ``pcm``; return all events (with ``finish()``'s)."""
    n = detector.frame_size
    events = []
    for i in range(0, len(pcm) - n + 1, n):
        events.extend(detector.push(pcm[i : i + n]))
    if finish:
        events.extend(detector.finish())
    return events


def turns(events: list) -> list[TurnEnded]:
    return [e for e in events if isinstance(e, TurnEnded)]


def frames_of(ms: int, rate: int = 16000) -> np.ndarray:
    """A recognisable ramp (sample i has value i % 30000), to check which audio a turn got."""
    return (np.arange(rate * ms // 1000) % 30000).astype(np.int16)


def scripted(mode: str, script: str, **settings) -> TurnDetector:
    return TurnDetector(mode, TurnSettings(**settings), classifier=speech.ScriptedClassifier(script))


# -- settings -------------------------------------------------------------------------------------


def test_defaults() -> None:
    s = TurnSettings()
    assert (s.prefix_padding_ms, s.silence_ms, s.max_turn_ms, s.segment_ms, s.vad_threshold) == (
        300,
        500,
        180_000,
        5000,
        0.5,
    )


@pytest.mark.parametrize(
    "field,value",
    [("silence_ms", 199), ("prefix_padding_ms", -1), ("max_turn_ms", 999), ("vad_threshold", 1.5), ("silence_ms", "x")],
)
def test_invalid_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ProtocolError) as info:
        TurnSettings(**{field: value})
    assert info.value.details["field"] == field
    assert info.value.code == "invalid_message"


def test_silence_can_go_down_to_200_ms() -> None:
    assert TurnSettings(silence_ms=200).silence_ms == 200


def test_unknown_mode() -> None:
    with pytest.raises(ProtocolError):
        TurnDetector("telepathy")
    assert TurnDetector("continuous").mode is TurnMode.CONTINUOUS


def test_wrong_frame_size() -> None:
    with pytest.raises(ValueError):
        TurnDetector().push(np.zeros(100, dtype=np.int16))


# -- voice_activity with real speech --------------------------------------------------------------


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("silence_ms", [200, 500, 800])
@pytest.mark.parametrize("text", [speech.SENTENCE, "Please stop.", "Yes"])
def test_turn_ends_after_the_configured_silence(frame_ms: int, silence_ms: int, text: str) -> None:
    pcm = speech.speak(text, pad_ms=(700, 2000))
    true_start, true_end = speech.speech_span(pcm, 16000)
    detector = TurnDetector("voice_activity", TurnSettings(silence_ms=silence_ms), frame_ms=frame_ms)
    events = feed(detector, pcm)
    [turn] = turns(events)
    assert turn.reason == "silence"
    assert abs(turn.t_ms - true_end - silence_ms) <= END_TOLERANCE_MS
    # Prefix padding: the turn starts 300 ms before the detected speech start.
    started = next(e for e in events if e.kind == "speech_start")
    assert turn.start_ms == started.t_ms - 300
    assert abs(started.t_ms - true_start) <= 60
    # The audio is exactly the stream between start_ms and t_ms.
    a, b = int(turn.start_ms * 16), int(turn.t_ms * 16)
    assert np.array_equal(turn.audio, pcm[a:b])


def test_event_order_and_streaming_rule() -> None:
    """TurnStarted.audio + the frames pushed after it, through the TurnEnded push, == the turn."""
    pcm = speech.speak("Hello there.", pad_ms=(600, 1200))
    detector = TurnDetector("voice_activity")
    n, streamed, events = detector.frame_size, [], []
    for i in range(0, len(pcm) - n + 1, n):
        frame = pcm[i : i + n]
        got = list(detector.push(frame))
        events += got
        start = next((e for e in got if isinstance(e, TurnStarted)), None)
        if start is not None:
            streamed.append(start.audio)
        elif detector.in_turn or any(isinstance(e, TurnEnded) for e in got):
            streamed.append(frame.copy())
    assert [e.kind for e in events] == ["speech_start", "turn_start", "speech_end", "turn_end"]
    assert np.array_equal(np.concatenate(streamed), events[-1].audio)
    assert events[1].t_ms == events[-1].start_ms and events[1].turn == events[-1].turn == 1


def test_short_pause_keeps_one_turn_long_pause_makes_two() -> None:
    word = speech.trim(speech.speak("Hello"), 16000)  # without espeak's own leading and trailing silence
    one = np.concatenate([speech.silence(500), word, speech.silence(300), word, speech.silence(1500)])
    assert len(turns(feed(TurnDetector("voice_activity"), one))) == 1
    two = np.concatenate([speech.silence(500), word, speech.silence(1200), word, speech.silence(1500)])
    first, second = turns(feed(TurnDetector("voice_activity"), two))
    assert second.start_ms >= first.t_ms  # the prefix never reaches back into the previous turn
    assert second.turn == 2


def test_noise_alone_makes_no_turn() -> None:
    events = feed(TurnDetector("voice_activity"), speech.noise_at(3000, -10))
    assert events == []


# -- voice_activity, scripted decisions (exact) ------------------------------------------------------


def test_prefix_is_limited_by_the_start_of_the_stream() -> None:
    detector = scripted("voice_activity", "00" + "1" * 20, silence_ms=200)
    events = feed(detector, frames_of(1000))
    started = next(e for e in events if isinstance(e, TurnStarted))
    assert started.t_ms == 0  # speech at 40 ms, prefix 300 ms: clipped to the stream start


def test_max_duration_cuts_and_the_next_turn_follows_on() -> None:
    script = "0" * 25 + "1" * 150  # speech from 500 ms to 3500 ms
    detector = scripted("voice_activity", script, max_turn_ms=1000, silence_ms=200)
    pcm = frames_of(5000)
    events = feed(detector, pcm)
    ended = turns(events)
    assert [t.reason for t in ended] == ["max_duration", "max_duration", "max_duration", "silence"]
    assert all(len(t.audio) <= 16000 for t in ended)
    assert ended[0].start_ms == 200 and ended[0].t_ms == 1200
    for a, b in zip(ended, ended[1:]):
        assert b.start_ms == a.t_ms  # contiguous
    assert np.array_equal(np.concatenate([t.audio for t in ended]), pcm[200 * 16 : int(ended[-1].t_ms) * 16])


def test_explicit_end_in_voice_activity_mode() -> None:
    detector = scripted("voice_activity", "0" * 5 + "1" * 100)
    pcm = frames_of(3000)
    feed(detector, pcm[: 16 * 1000], finish=False)
    [ended] = detector.end_turn()
    assert ended.reason == "explicit" and ended.t_ms == 1000
    assert detector.end_turn() == ()
    # Speech goes on: the next speech frame opens a new turn right where the last one ended.
    [started] = detector.push(pcm[16000:16320])
    assert isinstance(started, TurnStarted) and started.t_ms == 1000


def test_start_turn_only_in_push_to_talk() -> None:
    with pytest.raises(StateError):
        TurnDetector("voice_activity").start_turn()


# -- push_to_talk -----------------------------------------------------------------------------------


def test_push_to_talk_turn_is_exactly_between_start_and_end() -> None:
    detector = scripted("push_to_talk", "1" * 200)
    pcm = frames_of(3000)
    before = feed(detector, pcm[:8000], finish=False)  # VAD reports, no turn
    assert [e.kind for e in before] == ["speech_start"]
    [started] = detector.start_turn()
    assert started.t_ms == 500 and len(started.audio) == 0
    with pytest.raises(StateError):
        detector.start_turn()
    feed(detector, pcm[8000:40000], finish=False)
    [ended] = detector.end_turn()
    assert (ended.reason, ended.start_ms, ended.t_ms) == ("explicit", 500, 2500)
    assert np.array_equal(ended.audio, pcm[8000:40000])
    assert detector.end_turn() == ()
    assert turns(feed(detector, pcm[40000:])) == []  # no turn open: audio is not kept


def test_push_to_talk_max_duration_keeps_the_button_held() -> None:
    detector = scripted("push_to_talk", "", max_turn_ms=1000)
    pcm = frames_of(2500)
    detector.start_turn()
    events = feed(detector, pcm, finish=False) + list(detector.end_turn())
    ended = turns(events)
    assert [t.reason for t in ended] == ["max_duration", "max_duration", "explicit"]
    assert [len(t.audio) for t in ended] == [16000, 16000, 8000]
    assert np.array_equal(np.concatenate([t.audio for t in ended]), pcm)


def test_push_to_talk_end_of_stream() -> None:
    detector = scripted("push_to_talk", "")
    detector.start_turn()
    [ended] = turns(feed(detector, frames_of(400)))
    assert ended.reason == "end_of_stream" and len(ended.audio) == 6400


# -- continuous -----------------------------------------------------------------------------------


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_continuous_segments(frame_ms: int) -> None:
    detector = TurnDetector("continuous", TurnSettings(segment_ms=1200), frame_ms=frame_ms)
    pcm = frames_of(4000)
    events = feed(detector, pcm)
    ended = turns(events)
    assert [t.reason for t in ended] == ["segment"] * 3 + ["end_of_stream"]
    assert [t.t_ms for t in ended[:3]] == [1200, 2400, 3600]
    assert np.array_equal(np.concatenate([t.audio for t in ended]), pcm[: len(pcm) // detector.frame_size * detector.frame_size])
    assert [e.kind for e in events if e.kind.startswith("turn")] == ["turn_start", "turn_end"] * 4


def test_continuous_segment_is_cut_at_max_turn_ms() -> None:
    detector = TurnDetector("continuous", TurnSettings(segment_ms=5000, max_turn_ms=5000))
    ended = turns(feed(detector, frames_of(5000)))
    assert [t.reason for t in ended] == ["segment"]


def test_segment_longer_than_max_is_cut_at_max() -> None:
    detector = TurnDetector("continuous", TurnSettings(segment_ms=6000, max_turn_ms=5000))
    ended = turns(feed(detector, frames_of(6000)))
    assert [(t.reason, t.t_ms) for t in ended] == [("max_duration", 5000), ("end_of_stream", 6000)]


def test_vad_still_reports_in_continuous_mode() -> None:
    pcm = speech.speak("Hello there.", pad_ms=(500, 800))
    kinds = [e.kind for e in feed(TurnDetector("continuous"), pcm)]
    assert kinds.count("speech_start") == 1 and kinds.count("speech_end") == 1


# -- keep_audio=False (a consumer that streams each frame, as the server does) ----------------------


def _kept_and_streamed(mode: str, script: str, pcm: np.ndarray, **settings) -> tuple[list, list, list]:
    """Run the same stream through a keeping and a non-keeping detector; also rebuild the turns from
    TurnStarted.audio + the frames pushed after it (the streaming rule) on the non-keeping one."""
    kept = TurnDetector(mode, TurnSettings(**settings), classifier=speech.ScriptedClassifier(script))
    lean = TurnDetector(
        mode, TurnSettings(**settings), classifier=speech.ScriptedClassifier(script), keep_audio=False
    )
    if mode == "push_to_talk":
        kept_events = list(kept.start_turn())
        lean_events = list(lean.start_turn())
    else:
        kept_events, lean_events = [], []
    kept_events += feed(kept, pcm)
    streamed: list[np.ndarray] = []
    rebuilt: list[np.ndarray] = []
    for event in lean_events:
        streamed = [event.audio]
    n = lean.frame_size
    for i in range(0, len(pcm) - n + 1, n):
        frame = pcm[i : i + n]
        got = list(lean.push(frame))
        lean_events += got
        start = next((e for e in got if isinstance(e, TurnStarted)), None)
        ends_here = any(isinstance(e, TurnEnded) for e in got)
        if start is None and (lean.in_turn or ends_here):
            streamed.append(frame)
        if ends_here:
            rebuilt.append(np.concatenate(streamed))
            streamed = []
        if start is not None:
            streamed = [start.audio]
    finished = list(lean.finish())
    lean_events += finished
    if any(isinstance(e, TurnEnded) for e in finished):
        rebuilt.append(np.concatenate(streamed))
    return kept_events, lean_events, rebuilt


@pytest.mark.parametrize(
    "mode, script, settings",
    [
        ("voice_activity", "0" * 25 + "1" * 150 + "0" * 40 + "1" * 30, {"max_turn_ms": 1000, "silence_ms": 200}),
        ("push_to_talk", "", {"max_turn_ms": 1000}),
        ("continuous", "0" * 10 + "1" * 50, {"segment_ms": 1200}),
    ],
)
def test_a_detector_that_keeps_no_audio_reports_the_same_turns(mode: str, script: str, settings: dict) -> None:
    pcm = frames_of(6000)
    kept_events, lean_events, rebuilt = _kept_and_streamed(mode, script, pcm, **settings)
    describe = lambda events: [(e.kind, e.t_ms, getattr(e, "turn", None), getattr(e, "reason", None)) for e in events]
    assert describe(lean_events) == describe(kept_events)
    kept_turns = turns(kept_events)
    assert len(kept_turns) >= 3
    for kept_start, lean_start in zip(
        (e for e in kept_events if isinstance(e, TurnStarted)), (e for e in lean_events if isinstance(e, TurnStarted))
    ):
        assert np.array_equal(lean_start.audio, kept_start.audio)
    # The turn audio is not kept, but what a streaming consumer gets is the whole turn.
    assert all(len(t.audio) == 0 for t in turns(lean_events))
    assert [len(a) for a in rebuilt] == [len(t.audio) for t in kept_turns]
    for audio, kept_turn in zip(rebuilt, kept_turns):
        assert np.array_equal(audio, kept_turn.audio)


def test_a_detector_that_keeps_no_audio_holds_no_turn_buffer() -> None:
    detector = scripted("push_to_talk", "", max_turn_ms=60_000)
    lean = TurnDetector("push_to_talk", TurnSettings(max_turn_ms=60_000), keep_audio=False)
    for d in (detector, lean):
        d.start_turn()
        feed(d, frames_of(10_000), finish=False)
    assert detector._audio.nbytes >= 10 * 16000 * 2
    assert lean._audio.nbytes == 0


def test_a_silent_stream_allocates_no_turn_buffer() -> None:
    detector = TurnDetector("voice_activity")
    feed(detector, speech.silence(2000), finish=False)
    assert detector._audio.nbytes == 0


# -- pre_roll=False (turns only reported: no history ring) ------------------------------------------


@pytest.mark.parametrize(
    "mode, script, settings",
    [
        ("voice_activity", "1" * 60 + "0" * 25 + "1" * 150 + "0" * 40 + "1" * 30, {"max_turn_ms": 1000, "silence_ms": 200}),
        ("voice_activity", "0" * 3 + "1" * 40 + "0" * 20, {"prefix_padding_ms": 1000, "silence_ms": 200}),
        ("push_to_talk", "", {"max_turn_ms": 1000}),
        ("continuous", "0" * 10 + "1" * 50, {"segment_ms": 1200}),
    ],
)
def test_a_detector_without_pre_roll_reports_the_same_turns_at_the_same_times(mode: str, script: str, settings: dict) -> None:
    pcm = frames_of(6000)
    runs = []
    for pre_roll in (True, False):
        detector = TurnDetector(mode, TurnSettings(**settings), classifier=speech.ScriptedClassifier(script),
                                keep_audio=False, pre_roll=pre_roll)
        events = list(detector.start_turn()) if mode == "push_to_talk" else []
        runs.append((detector, events + feed(detector, pcm)))
    (with_ring, events), (bare, bare_events) = runs
    describe = lambda events: [(e.kind, e.t_ms, getattr(e, "turn", None), getattr(e, "reason", None),
                                getattr(e, "start_ms", None)) for e in events]
    assert turns(events)
    assert describe(bare_events) == describe(events)
    starts = [e for e in events if isinstance(e, TurnStarted)]
    assert any(len(e.audio) for e in starts)  # the ring's pre-roll, which the bare detector does without
    assert all(len(e.audio) == 0 for e in bare_events if isinstance(e, TurnStarted))
    assert with_ring._history is not None and bare._history is None


def test_pre_roll_false_needs_keep_audio_false() -> None:
    with pytest.raises(ValueError):
        TurnDetector("voice_activity", pre_roll=False)
