"""Task: one asynchronous operation whose completion callback runs exactly once on a loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar, final

from .watch import in_loop_thread

__all__ = ["Task"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_UNSET: Any = object()


@final
class Task(Generic[T]):
    """One asynchronous operation whose completion callback runs exactly once on a loop.

    The Python form of QEMU's QIOTask.  A task has a *source* object (the channel it
    works for), an optional ``callback(task)`` and an asyncio *loop* (by default
    the one running when the task is created).

    * :meth:`run_in_thread` runs a worker in a thread; when the worker returns, the
      callback runs on the loop's thread.  Without a loop, completion waits for
      :meth:`wait_thread`, which completes in the calling thread.
    * :meth:`set_error` keeps the *first* error; later ones are dropped.
    * :meth:`complete` runs the callback exactly once, from any thread;
      :meth:`cancel` makes sure it never runs (used when the source is closed
      while the operation is pending).
    * A task is awaitable: ``await task`` returns the result or raises the error.
    """

    __slots__ = (
        "_callback",
        "_completed",
        "_done",
        "_error",
        "_futures",
        "_lock",
        "_loop",
        "_result",
        "_thread",
        "source",
    )

    def __init__(
        self,
        source: object,
        callback: Callable[[Task[T]], None] | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        #: The object this task works for.
        self.source = source
        self._callback = callback
        self._loop = loop
        self._error: BaseException | None = None
        self._result: T = _UNSET
        self._lock = threading.Lock()
        self._completed = False
        self._done = threading.Event()
        self._futures: list[asyncio.Future[None]] = []
        self._thread: threading.Thread | None = None

    # ---- outcome --------------------------------------------------------

    def set_error(self, error: BaseException | None) -> None:
        """Record *error*; the first one wins, ``None`` does nothing."""
        if error is not None and self._error is None:
            self._error = error

    @property
    def error(self) -> BaseException | None:
        return self._error

    def set_result(self, value: T) -> None:
        self._result = value

    def result(self) -> T:
        """The result; raises the task's error if it failed."""
        if self._error is not None:
            raise self._error
        if self._result is _UNSET:
            raise RuntimeError("task has no result")
        return self._result

    @property
    def done(self) -> bool:
        return self._completed

    # ---- completion -----------------------------------------------------

    def complete(self) -> None:
        """Run the callback once, on the loop's thread if the task has a loop."""
        loop = self._loop
        if loop is not None and not in_loop_thread(loop):
            try:
                loop.call_soon_threadsafe(self._complete)
                return
            except RuntimeError:
                pass  # loop closed: complete here rather than never
        self._complete()

    def _complete(self) -> None:
        with self._lock:
            if self._completed:
                return
            self._completed = True
        callback, self._callback = self._callback, None
        try:
            if callback is not None:
                callback(self)
        finally:
            self._done.set()
            for fut in self._futures:
                if not fut.done():
                    fut.get_loop().call_soon_threadsafe(_resolve, fut)
            self._futures.clear()

    def cancel(self) -> None:
        """Make sure the callback never runs (thread-safe)."""
        with self._lock:
            if self._completed:
                return
            self._completed = True
        self._callback = None
        self.set_error(asyncio.CancelledError())
        self._done.set()
        for fut in self._futures:
            fut.get_loop().call_soon_threadsafe(_resolve, fut)

    # ---- threads --------------------------------------------------------

    def run_in_thread(self, worker: Callable[[Task[T]], None]) -> None:
        """Run ``worker(task)`` in a new thread, then complete on the loop."""

        def body() -> None:
            try:
                worker(self)
            except BaseException as exc:
                self.set_error(exc)
            if self._loop is not None:
                self.complete()

        self._thread = threading.Thread(target=body, name="iochannel-task", daemon=True)
        self._thread.start()

    def wait_thread(self) -> None:
        """Block until the worker finishes, then complete synchronously."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._complete()

    # ---- awaiting -------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        if not self._completed:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            with self._lock:
                pending = not self._completed
                if pending:
                    self._futures.append(fut)
            if pending:
                yield from fut.__await__()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.result()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
