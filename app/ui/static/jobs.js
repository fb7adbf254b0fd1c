// The jobs list: newest first, filtered by status and kind (kept in the URL), refreshed every 2 s.

import { api, h, poll, serverNow, uiPath } from "./api.js";
import { absoluteTime, duration, jobPace, rate, relativeTime } from "./format.js";

const PAGE = 50;
const MAX_ROWS = 200; // EMBEDQ_JOBS_PAGE_MAX's default: the API returns no more in one call
const REFRESH_MS = 2000;

const body = document.getElementById("jobs-body");
const empty = document.getElementById("jobs-empty");
const more = document.getElementById("more");
const statusSelect = document.getElementById("filter-status");
const kindSelect = document.getElementById("filter-kind");

const params = new URLSearchParams(location.search);
statusSelect.value = params.get("status") || "";
kindSelect.value = params.get("kind") || "";
let limit = PAGE;

function query() {
  const q = new URLSearchParams({ limit: String(limit) });
  if (statusSelect.value) q.set("status", statusSelect.value);
  if (kindSelect.value) q.set("kind", kindSelect.value);
  return q;
}

function progressCell(job) {
  const pct = Math.floor(job.progress);
  return h(
    "div",
    { class: "progress" },
    h("div", { class: "bar" }, h("div", { class: `fill ${job.status}`, style: `width: ${job.progress}%` })),
    h("span", { class: "pct" }, `${pct}%`),
  );
}

function row(job, now) {
  const { rate: perSecond, eta } = jobPace(job, now);
  const href = uiPath(`/jobs/${job.id}`);
  return h(
    "tr",
    { "data-job-id": job.id, "data-status": job.status, onclick: () => (location.href = href) },
    h("td", {}, h("a", { href, class: "mono" }, job.id.slice(0, 8))),
    h("td", {}, job.kind.replaceAll("_", " ")),
    h("td", {}, h("span", { class: `pill ${job.status}`, title: job.error || job.message || "" }, job.status)),
    h("td", { class: "progress-col" }, progressCell(job)),
    h("td", { class: "num" }, rate(perSecond)),
    h("td", { class: "num" }, eta === null ? "—" : duration(eta)),
    h("td", { class: "model", title: job.model }, job.model.split("/").at(-1)),
    h("td", { title: absoluteTime(job.created_at) }, relativeTime(job.created_at, now)),
  );
}

async function refresh() {
  const page = await api(`/jobs?${query()}`);
  const now = serverNow();
  body.replaceChildren(...page.data.map((job) => row(job, now)));
  empty.hidden = page.data.length > 0;
  more.hidden = page.next_offset === null || limit >= MAX_ROWS;
}

const poller = poll(refresh, REFRESH_MS);

function onFilterChange() {
  limit = PAGE;
  const q = query();
  q.delete("limit");
  history.replaceState(null, "", q.size ? `?${q}` : location.pathname);
  poller.now();
}

statusSelect.addEventListener("change", onFilterChange);
kindSelect.addEventListener("change", onFilterChange);
more.addEventListener("click", () => {
  limit = Math.min(limit + PAGE, MAX_ROWS);
  poller.now();
});
