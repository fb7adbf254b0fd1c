// A job's webhook events and every attempt to deliver them, from /jobs/{id}/webhook-deliveries.

import { api, h, isMissingRoute } from "./api.js";
import { absoluteTime, relativeTime } from "./format.js";

const $ = (id) => document.getElementById(id);
// Events are created when a job ends, so a finished job may still get its first one for a moment.
const FIRST_EVENT_GRACE_MS = 60_000;

let available = true;

/** Fetch and render the delivery log; returns true while more deliveries are expected. */
export async function refreshWebhooks(job, now) {
  if (!available) return false;
  let log;
  try {
    log = await api(`/jobs/${encodeURIComponent(job.id)}/webhook-deliveries`);
  } catch (error) {
    if (!isMissingRoute(error)) throw error;
    available = false; // this server has no webhooks API
    return false;
  }
  $("webhooks").hidden = !job.webhook_url && log.events.length === 0;
  $("webhook-events").replaceChildren(...log.events.map(eventLine));
  $("webhooks-table").querySelector("tbody").replaceChildren(...log.data.map((d) => attemptRow(d, now)));
  $("webhooks-table").hidden = log.data.length === 0;
  $("webhooks-empty").hidden = log.data.length > 0;
  const unsettled = log.events.some((e) => e.status === "pending" || e.status === "sending");
  const justFinished = job.finished_at && now - Date.parse(job.finished_at) < FIRST_EVENT_GRACE_MS;
  return unsettled || (log.events.length === 0 && Boolean(justFinished));
}

function eventLine(event) {
  const pill = event.status === "succeeded" ? "succeeded" : event.status === "failed" ? "failed" : "running";
  const retry = event.next_attempt_at ? ` · next attempt ${absoluteTime(event.next_attempt_at)}` : "";
  return h(
    "li",
    { "data-event": event.id },
    h("span", { class: `pill ${pill}` }, event.status),
    " ",
    h("span", { class: "mono" }, event.type),
    ` · ${event.attempts} attempt${event.attempts === 1 ? "" : "s"}${retry}`,
    event.last_error ? h("span", { class: "bad" }, ` · ${event.last_error}`) : null,
  );
}

function attemptRow(delivery, now) {
  const response = delivery.status_code === null ? "no response" : `HTTP ${delivery.status_code}`;
  return h(
    "tr",
    { "data-succeeded": String(delivery.succeeded) },
    h("td", {}, `#${delivery.attempt}`),
    h("td", { class: "mono" }, delivery.event_type),
    h("td", { title: absoluteTime(delivery.created_at) }, relativeTime(delivery.created_at, now)),
    h("td", { class: delivery.succeeded ? "good" : "bad", title: delivery.response_body || "" }, response),
    h("td", { class: "num" }, `${Math.round(delivery.duration_ms)} ms`),
    h("td", { class: "wrap" }, delivery.error || h("span", { class: "muted" }, delivery.url)),
  );
}
