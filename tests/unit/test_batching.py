"""Caller-side micro-batching: concurrent submissions share one call, results go to their owner,
a failure reaches every caller of its batch and no other."""

import asyncio

import pytest

from serve_apps.batching import HandleBatcher


def test_concurrent_submissions_share_one_call_and_get_their_own_result() -> None:
    calls: list[list[int]] = []

    async def call(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    async def run() -> list[int]:
        batcher = HandleBatcher(call, max_batch=64, max_wait_s=0.005)
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    assert asyncio.run(run()) == [i * 10 for i in range(20)]
    assert calls == [list(range(20))]


def test_a_full_batch_is_sent_without_waiting() -> None:
    calls: list[int] = []

    async def call(items: list[int]) -> list[int]:
        calls.append(len(items))
        return items

    async def run() -> None:
        batcher = HandleBatcher(call, max_batch=4, max_wait_s=10.0)
        await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(8))), timeout=1.0)

    asyncio.run(run())
    assert calls == [4, 4]


def test_a_failed_batch_fails_its_callers_only() -> None:
    async def call(items: list[int]) -> list[int]:
        if 99 in items:
            raise RuntimeError("model down")
        return items

    async def run() -> tuple[object, object]:
        batcher = HandleBatcher(call, max_batch=2, max_wait_s=0.001)
        bad = asyncio.gather(batcher.submit(99), batcher.submit(1), return_exceptions=True)
        good = asyncio.gather(batcher.submit(2), batcher.submit(3))
        return await bad, await good

    bad, good = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) for r in bad)
    assert good == [2, 3]


def test_a_caller_that_times_out_does_not_break_the_batch() -> None:
    async def call(items: list[int]) -> list[int]:
        await asyncio.sleep(0.05)
        return items

    async def run() -> int:
        batcher = HandleBatcher(call, max_batch=8, max_wait_s=0.001)
        impatient = asyncio.wait_for(batcher.submit(1), timeout=0.01)
        patient = batcher.submit(2)
        results = await asyncio.gather(impatient, patient, return_exceptions=True)
        assert isinstance(results[0], TimeoutError)
        return results[1]

    assert asyncio.run(run()) == 2


@pytest.mark.parametrize("n", [1, 63, 64, 65, 130])
def test_every_item_is_answered_exactly_once(n: int) -> None:
    async def call(items: list[int]) -> list[int]:
        return items

    async def run() -> list[int]:
        batcher = HandleBatcher(call, max_batch=64, max_wait_s=0.001)
        return await asyncio.gather(*(batcher.submit(i) for i in range(n)))

    assert asyncio.run(run()) == list(range(n))
