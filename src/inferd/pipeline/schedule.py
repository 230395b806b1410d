"""Stage `schedule`: the job goes to its model's scheduler (queue, dynamic batcher, instances) and the model's
raw outputs come back — awaited on the event loop, or waited for on the caller's thread for synchronous calls."""

from __future__ import annotations

from collections.abc import Awaitable

from .call import Call


class ScheduleStage:
    name = "schedule"

    def __call__(self, call: Call) -> Awaitable[None] | None:
        if call.response is not None:  # answered already (a response-cache hit): the model does not run
            return None
        scheduler = call.model.scheduler
        if call.sync:
            call.results = scheduler.run_sync(call.job)  # type: ignore[arg-type]
            return None
        results = scheduler.run_now(call.job)  # type: ignore[arg-type]
        if results is not None:  # ran at once on this loop (a cheap model, an idle instance)
            call.results = results
            return None
        return self._run(call)

    @staticmethod
    async def _run(call: Call) -> None:
        call.results = await call.model.scheduler.run(call.job)  # type: ignore[arg-type]
