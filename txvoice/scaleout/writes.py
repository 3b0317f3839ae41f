"""
How a node's background writes to Redis behave at scale and while Redis is unreachable.

- :func:`in_batches`: what a node re-writes for all its sessions (the registry's and the resume
  store's refresh, every third of ``--redis-session-ttl`` and each time Redis is back) goes out
  :data:`BATCH` sessions at a time, the next batch a reactor turn after the previous one's reply:
  encoding a thousand sessions at once held the reactor 21-23 ms on the 2-core test machine; a batch
  of 100 holds it ~3 ms.  A batch that fails ends the round (Redis is down: the next refresh
  after it is back writes everything again).
- :class:`OutageNotice`: a kind of write that fails is logged once per outage (the first failure),
  the rest counted, and the first success after it says how many failed.  While Redis is down
  every registry write, resume write, reliable-message record and broadcast fails at once; a warning for
  each is a log storm on the reactor thread at exactly the wrong time.
- :class:`RefreshedStore`: the service a store with expiring entries is (registry, resume store,
  call store): ``refresh`` every third of ``--redis-session-ttl`` while running and each time Redis is
  back, its failures through one :class:`OutageNotice`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:  # pragma: no cover
    from txvoice.scaleout.connection import RedisConnection

log = Logger(namespace="txvoice.redis")

T = TypeVar("T")

#: Sessions per write of a refresh round.
BATCH = 100


class OutageNotice:
    """Logs the first failure of one kind of write per outage, and how many failed once one succeeds."""

    def __init__(self, what: str) -> None:
        #: What is done, for the log: "writing the session registry to Redis".
        self.what = what
        self.failing = False
        self.failures = 0

    def succeeded(self, result: T) -> T:
        if self.failing:
            log.info("{what} works again ({failures} failed meanwhile)", what=self.what, failures=self.failures)
        self.failing = False
        self.failures = 0
        return result

    def passed(self, failure: Failure) -> Failure:
        """Count (and the first time, log) ``failure``; return it for the caller to handle."""
        self.failures += 1
        if not self.failing:
            self.failing = True
            log.warn("{what} failed (logged once until it works again): {error}", what=self.what,
                     error=failure.getErrorMessage())
        return failure

    def failed(self, failure: Failure) -> None:
        """As :meth:`passed`, for a write nobody waits for: the failure ends here."""
        self.passed(failure)

    def watch(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Report ``d``'s outcome here; a failure ends here."""
        return d.addCallbacks(self.succeeded, self.failed)


def in_batches(clock: IReactorTime, items: Sequence[T], write: Callable[[list[T]], defer.Deferred[Any]],
               size: int = BATCH) -> defer.Deferred[int]:
    """
    ``write`` each ``size`` items of ``items`` (it encodes them then, so it may leave out those
    gone since), one batch per reactor turn after the previous batch's reply; fires with the
    number of batches, or with the first failure.
    """
    batches = [list(items[i:i + size]) for i in range(0, len(items), size)]

    @defer.inlineCallbacks
    def run() -> Any:
        for n, batch in enumerate(batches):
            if n:
                yield task.deferLater(clock, 0, lambda: None)
            yield write(batch)
        return len(batches)

    d: defer.Deferred[int] = run()
    return d


class RefreshedStore(Service):
    """A store whose Redis entries expire unless re-written: :meth:`refresh` on a timer and when Redis is back."""

    def __init__(self, redis: "RedisConnection", what: str) -> None:
        self.redis = redis
        self._refresh = task.LoopingCall(self.refresh)
        self._refresh.clock = redis.clock
        self._notice = OutageNotice(what)
        redis.on_up(self.refresh)

    def refresh(self) -> defer.Deferred[Any]:
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._refresh.start(self.redis.settings.session_ttl / 3.0, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._refresh.running:
            self._refresh.stop()
