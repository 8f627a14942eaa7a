"""The in-process task manager (JOBS-8): statuses, cancel, bounded history, clean shutdown."""

import asyncio

import pytest

from app.core.background import ShuttingDown, TaskManager, TaskStatus


async def test_status_follows_each_task_to_its_end() -> None:
    manager = TaskManager()
    release = asyncio.Event()

    async def waits() -> None:
        await release.wait()

    async def fails() -> None:
        raise ValueError("broken chore")

    running = manager.spawn("waits", waits)
    failing = manager.spawn("fails", fails)
    await asyncio.sleep(0)  # let both start: one step of the loop, not a wait for work
    assert running.status is TaskStatus.RUNNING
    assert running.finished_at is None
    release.set()
    async with asyncio.timeout(1):
        while running.status is TaskStatus.RUNNING:
            await asyncio.sleep(0)
    assert await manager.shutdown(grace=1) == []

    assert running.status is TaskStatus.DONE
    assert running.finished_at is not None
    assert running.finished_at >= running.started_at
    assert failing.status is TaskStatus.FAILED
    assert failing.error == "ValueError: broken chore"
    assert [info.name for info in manager.list()] == ["fails", "waits"]  # newest first


async def test_cancel_stops_a_running_task_and_leaves_finished_ones_alone() -> None:
    manager = TaskManager()
    cleaned_up = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    info = manager.spawn("forever", forever)
    await asyncio.sleep(0)  # started, so its cleanup has something to clean
    cancelled = await manager.cancel(info.id)

    assert cancelled is info
    assert info.status is TaskStatus.CANCELLED
    assert cleaned_up.is_set()
    assert await manager.cancel(info.id) is info  # already finished: answered as it is
    assert await manager.cancel("0" * 32) is None
    assert await manager.shutdown(grace=1) == []


async def test_history_is_bounded_but_running_tasks_stay() -> None:
    manager = TaskManager(history=3)
    hold = asyncio.Event()

    async def held() -> None:
        await hold.wait()

    async def quick() -> None:
        return None

    long_running = manager.spawn("held", held)
    for _ in range(10):
        manager.spawn("quick", quick)
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    listed = manager.list()
    assert len(listed) == 3
    assert long_running in listed  # the oldest, but still running
    hold.set()
    await manager.shutdown(grace=1)


async def test_shutdown_cancels_everything_even_a_task_that_ignores_one_cancel() -> None:
    manager = TaskManager()
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 2:
                    raise

    async def polite() -> None:
        await asyncio.Event().wait()

    stuck, plain = manager.spawn("stubborn", stubborn), manager.spawn("polite", polite)
    await asyncio.sleep(0)
    assert await manager.shutdown(grace=2) == []

    assert stuck.status is TaskStatus.CANCELLED
    assert plain.status is TaskStatus.CANCELLED
    assert cancels == 2
    pending = [t for t in asyncio.all_tasks() if t.get_name().startswith("background:")]
    assert pending == []
    with pytest.raises(ShuttingDown):
        manager.spawn("late", polite)


async def test_shutdown_gives_up_on_a_task_that_never_ends_after_its_grace() -> None:
    manager = TaskManager()
    stop = asyncio.Event()

    async def immortal() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    manager.spawn("immortal", immortal)
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await manager.shutdown(grace=0.3) == ["immortal"]
    assert loop.time() - began < 2
    # Let it go (the test must not leave it pending): one more cancel after setting stop.
    stop.set()
    for task in [t for t in asyncio.all_tasks() if t.get_name() == "background:immortal"]:
        task.cancel()
        await asyncio.wait([task], timeout=1)
        assert task.done()
