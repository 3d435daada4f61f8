"""Drill 5: what producers get wrong. Duplicates (the same message id; the same event id; the
same event id with other content; the same start event again after the run ended), events out
of order, poison, oversized bodies, a device id that differs from the session id."""

from __future__ import annotations

from drills.catalog import Trial, drill, trial
from drills.env import Platform
from drills.observe import Observer
from drills.report import Row
from drills.sender import body


async def wait_completed(t: Trial, device: str) -> None:
    """Until the device's run has completed (the late duplicate must come after it)."""
    observer = Observer(t.stage)
    for _ in range(120):
        snap = await observer.snapshot([device], drain_letters=False)
        if snap.runs.get(device) == ["COMPLETED"]:
            return
        await t.stage.sink_wait(0.5)
    raise RuntimeError(f"{device}: its run did not complete")


@drill(
    "duplicates",
    5,
    injected=(
        "same message id twice; same event id twice; same event id, other content; the start "
        "event again after the run ended; ready before hello; unparseable; oversized; "
        "deviceId != session id"
    ),
    expected=(
        "each event stored once, 1 completed run per device, 2 side effects each; poison, "
        "oversized and mismatched messages dead-lettered with their reason"
    ),
)
async def duplicates(platform: Platform, row: Row) -> Row:
    async with trial(platform, row) as t:
        send, expect = t.send, t.expect
        await t.stage.start_system()
        same_message, same_event, other_content, late, out_of_order, poison, big, mismatch = (
            t.device(n) for n in range(8)
        )
        # The broker drops the second copy (duplicate detection on the message id).
        expect.add(same_message, "hello-m")
        await send.event(same_message, "device.hello", "hello-m", message_id="m-1")
        await send.event(same_message, "device.hello", "hello-m", message_id="m-1")
        await t.episode_end(same_message)
        # A producer retry with a new message id: the event id decides.
        expect.add(same_event, "hello-e")
        await send.event(same_event, "device.hello", "hello-e")
        await send.event(same_event, "device.hello", "hello-e")
        await t.episode_end(same_event)
        # The same event id with other content: stored once (first wins), or dead-lettered.
        expect.add(other_content, "hello-c")
        await send.event(other_content, "device.hello", "hello-c", firmware="1.0")
        conflicting = await send.event(other_content, "device.hello", "hello-c", firmware="9.9")
        expect.optional_letters.add(conflicting.message_id)
        await t.episode_end(other_content)
        # Out of order: the device's ready comes before its hello.
        await t.episode_end(out_of_order)
        await t.episode_start(out_of_order)
        # Poison, oversized, wrong session: each dead-lettered beside a normal episode.
        await t.episode_start(poison)
        bad = await send.raw("{not json", poison)
        expect.dead_letters[bad.message_id] = "UnparseableBody"
        await t.episode_end(poison)
        await t.episode_start(big)
        huge = await send.raw(body(big, "telemetry", "big-1", blob="x" * 8192), big)
        expect.dead_letters[huge.message_id] = "MessageTooLarge"
        await t.episode_end(big)
        await t.episode_start(mismatch)
        stranger = f"{mismatch}-other"
        expect.events[stranger] = set()
        expect.devices_without_run.add(stranger)
        wrong = await send.raw(body(stranger, "device.hello", "hello-x"), mismatch)
        expect.dead_letters[wrong.message_id] = "SessionMismatch"
        await t.episode_end(mismatch)
        # The start event again, after its run completed: no second run, stored once.
        expect.add(late, "hello-l")
        await send.event(late, "device.hello", "hello-l")
        await t.episode_end(late)
        await wait_completed(t, late)
        await send.event(late, "device.hello", "hello-l")
        t.fault()
        return await t.settle()
