// A hosted wasmos framework in JavaScript: a component of the
// `wasmos:scheduler` world (wit/scheduler/scheduler.wit) built with
// componentize-js.
//
// Jobs handed over by `wasmos submit --framework NAME` are queued by priority
// (higher first), FIFO within a priority, and launched on offers that have
// room for them; offers that fit nothing are declined for five seconds.
// Module state (the queue) lives as long as the framework.
import { log } from "wasmos:scheduler/host@0.1.0";

const queue = []; // { job, arrival }, sorted: higher priority first, then arrival
let arrivals = 0;

// Scalars are s64 thousandths, so BigInt.
const amount = (resources, name) =>
  resources.filter((r) => r.name === name).reduce((sum, r) => sum + r.milli, 0n);
const fits = (job, room) => Object.keys(room).every((n) => amount(job.resources, n) <= room[n]);

export function init(config) {
  log("info", `fifo-js: ready (config ${JSON.stringify(config)})`);
  return [];
}

export function onSubmit(job) {
  queue.push({ job, arrival: ++arrivals });
  queue.sort((a, b) => b.job.priority - a.job.priority || a.arrival - b.arrival);
  return [];
}

export function onOffers(offers) {
  return offers.map((offer) => {
    const room = { cpus: amount(offer.resources, "cpus"), mem: amount(offer.resources, "mem") };
    const tasks = [];
    while (queue.length && fits(queue[0].job, room)) {
      const { job } = queue.shift();
      for (const n of Object.keys(room)) room[n] -= amount(job.resources, n);
      tasks.push({
        taskId: job.id, name: job.name, moduleSha256: job.moduleSha256, args: job.args, env: job.env,
        resources: job.resources, limits: job.limits, input: job.payload, health: job.health,
      });
    }
    return tasks.length
      ? { tag: "launch", val: { offerIds: [offer.id], tasks, refuseSeconds: undefined } }
      : { tag: "decline", val: { offerIds: [offer.id], refuseSeconds: 5 } };
  });
}

export function onUpdate(status) {
  if (status.outcome) log("info", `fifo-js: ${status.taskId} ${status.outcome.kind}`);
  return [];
}

export const onRescind = (offerId) => [];
export const onTimer = () => [];
