"""A hosted wasmos framework in Python: a component of the `wasmos:scheduler`
world (wit/scheduler/scheduler.wit) built with componentize-py.

Jobs handed over by `wasmos submit --framework NAME` are queued by priority
(higher first), FIFO within a priority, and launched on offers that have room
for them; offers that fit nothing are declined for five seconds. Module state
(the queue) lives as long as the framework: the master keeps one instance.
"""

import wit_world
from wit_world.imports import host, types
from wit_world.imports.types import Call_Decline, Call_Launch, Decline, Launch, LogLevel, TaskSpec

queue = []  # (job, arrival), kept sorted: higher priority first, then arrival
arrivals = 0


def amount(resources, name):
    return sum(r.milli for r in resources if r.name == name)


def fits(job, room):
    return all(amount(job.resources, name) <= left for name, left in room.items())


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> list:
        host.log(LogLevel.INFO, f"fifo-py: ready (config {config!r})")
        return []

    def on_submit(self, job: types.Job) -> list:
        global arrivals
        arrivals += 1
        queue.append((job, arrivals))
        queue.sort(key=lambda q: (-q[0].priority, q[1]))
        return []

    def on_offers(self, offers: list) -> list:
        calls = []
        for offer in offers:
            room = {name: amount(offer.resources, name) for name in ("cpus", "mem")}
            tasks = []
            while queue and fits(queue[0][0], room):
                job, _ = queue.pop(0)
                for name in room:
                    room[name] -= amount(job.resources, name)
                tasks.append(TaskSpec(job.id, job.name, job.module_sha256, job.args, job.env,
                                      job.resources, job.limits, job.payload, job.health))
            if tasks:
                calls.append(Call_Launch(Launch([offer.id], tasks, None)))
            else:
                calls.append(Call_Decline(Decline([offer.id], 5.0)))
        return calls

    def on_update(self, status: types.TaskStatus) -> list:
        if status.outcome is not None:
            host.log(LogLevel.INFO, f"fifo-py: {status.task_id} {status.outcome.kind}")
        return []

    def on_rescind(self, offer_id: str) -> list:
        return []

    def on_timer(self) -> list:
        return []
