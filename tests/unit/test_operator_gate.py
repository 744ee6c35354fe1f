"""The reconcile gate: at most N reconciles in flight; waiting urgent ones (a stage Job changed phase) go first."""

from __future__ import annotations

import asyncio

import pytest

from kubetune.operator.gate import PriorityGate


def test_urgent_waiters_go_before_earlier_normal_ones_and_the_capacity_holds() -> None:
    async def scenario() -> tuple[list[str], int]:
        gate = PriorityGate(2)
        order: list[str] = []
        inside, most = 0, 0
        release = asyncio.Event()

        async def reconcile(name: str, urgent: bool) -> None:
            nonlocal inside, most
            async with gate.slot(urgent=urgent):
                inside += 1
                most = max(most, inside)
                order.append(name)
                await release.wait()
                inside -= 1

        tasks = [asyncio.create_task(reconcile(name, urgent)) for name, urgent in
                 (("first", False), ("second", False), ("normal", False), ("urgent", True), ("later", False))]
        await asyncio.sleep(0.01)
        assert order == ["first", "second"] and gate.waiting() == 3
        release.set()
        await asyncio.gather(*tasks)
        return order, most

    order, most = asyncio.run(scenario())
    assert order == ["first", "second", "urgent", "normal", "later"]
    assert most == 2


def test_a_cancelled_waiter_gives_up_its_turn_and_no_place_is_lost() -> None:
    async def scenario() -> list[str]:
        gate = PriorityGate(1)
        done: list[str] = []
        hold = asyncio.Event()

        async def reconcile(name: str) -> None:
            async with gate.slot(urgent=False):
                if name == "holder":
                    await hold.wait()
                done.append(name)

        holder = asyncio.create_task(reconcile("holder"))
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(reconcile("cancelled"))
        waiting = asyncio.create_task(reconcile("waiting"))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        hold.set()
        await asyncio.gather(holder, waiting)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        async with gate.slot(urgent=False):  # the place came back
            done.append("after")
        return done

    assert asyncio.run(scenario()) == ["holder", "waiting", "after"]


def test_a_gate_needs_room_for_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PriorityGate(0)


def test_a_waiter_that_becomes_urgent_moves_to_the_urgent_line() -> None:
    async def scenario() -> list[str]:
        gate = PriorityGate(1)
        order: list[str] = []
        release = asyncio.Event()

        async def reconcile(name: str, urgent: bool = False) -> None:
            async with gate.slot(urgent=urgent, key=name):
                order.append(name)
                await release.wait()

        tasks = [asyncio.create_task(reconcile(name)) for name in ("holder", "new-1", "new-2", "timer")]
        await asyncio.sleep(0.01)
        gate.hurry("timer")  # the timer's run: its Job finished while the pass waited
        tasks.append(asyncio.create_task(reconcile("handoff", urgent=True)))
        await asyncio.sleep(0.01)
        assert gate.waiting() == 4  # the hurried waiter counts once
        release.set()
        await asyncio.gather(*tasks)
        gate.hurry("timer")  # no longer waiting: nothing to move
        return order

    assert asyncio.run(scenario()) == ["holder", "timer", "handoff", "new-1", "new-2"]

