"""Ports of QEMU test-io-task.c: completion runs once, on the loop thread, first error wins."""

from __future__ import annotations

import asyncio
import threading

import pytest

from iochannel import Task


class Source:
    pass


def test_complete() -> None:
    obj = Source()
    seen: list[tuple[object, BaseException | None]] = []
    task: Task[None] = Task(obj, lambda t: seen.append((t.source, t.error)))
    assert task.source is obj
    task.complete()
    task.complete()  # exactly once
    assert seen == [(obj, None)]


def test_failure() -> None:
    err = RuntimeError("first")
    seen: list[BaseException | None] = []
    task: Task[None] = Task(Source(), lambda t: seen.append(t.error))
    task.set_error(err)
    task.set_error(RuntimeError("second"))  # the first error wins
    task.set_error(None)
    task.complete()
    assert seen == [err]


def _thread_case(fail: bool) -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        worker_thread: list[int] = []
        callback_thread: list[int] = []
        done = asyncio.Event()

        def worker(t: Task[int]) -> None:
            worker_thread.append(threading.get_ident())
            if fail:
                raise ValueError("worker failed")
            t.set_result(42)

        def callback(t: Task[int]) -> None:
            callback_thread.append(threading.get_ident())
            done.set()

        task: Task[int] = Task(Source(), callback)
        task.run_in_thread(worker)
        await done.wait()
        assert worker_thread[0] != loop_thread
        assert callback_thread == [loop_thread]
        if fail:
            with pytest.raises(ValueError, match="worker failed"):
                await task
        else:
            assert await task == 42

    asyncio.run(main())


def test_thread_complete() -> None:
    _thread_case(fail=False)


def test_thread_failure() -> None:
    _thread_case(fail=True)


def test_wait_thread_without_loop() -> None:
    seen: list[int] = []
    task: Task[int] = Task(Source(), lambda t: seen.append(t.result()))
    task.run_in_thread(lambda t: t.set_result(7))
    task.wait_thread()
    assert seen == [7]


def test_cancel_prevents_callback() -> None:
    async def main() -> None:
        seen: list[int] = []
        gate = threading.Event()
        task: Task[None] = Task(Source(), lambda t: seen.append(1))
        task.run_in_thread(lambda t: gate.wait())
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)
        assert seen == []

    asyncio.run(main())
