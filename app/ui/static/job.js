// One job: progress, counts, pace, timing, errors, webhook deliveries and (for fine-tuning) loss and
// evaluation, refreshed every 1.5 s until the job has ended and its webhooks have settled.

import { ApiError, api, h, openWithKey, poll, serverNow, showError } from "./api.js";
import { absoluteTime, duration, isTerminal, jobPace, num, rate, relativeTime } from "./format.js";
import { TRAINING_KINDS, refreshTraining, skippedLines } from "./training.js";
import { refreshWebhooks } from "./webhooks.js";

const REFRESH_MS = 1500;
const MAX_ERRORS_SHOWN = 50;
const jobId = document.getElementById("job").dataset.jobId;
const apiRoot = document.body.dataset.apiRoot || "";
const $ = (id) => document.getElementById(id);

function stat(name, label, value, attrs = {}) {
  return h("div", { "data-stat": name, ...attrs }, h("dt", {}, label), h("dd", {}, value));
}

function renderSummary(job, now) {
  const { rate: perSecond, eta } = jobPace(job, now);
  const { total, done, failed } = job.counts;
  const training = TRAINING_KINDS.has(job.kind);
  $("job-kind").textContent = job.kind.replaceAll("_", " ");
  $("job-status").textContent = job.status;
  $("job-status").className = `pill ${job.status}`;
  $("job-bar").className = `fill ${job.status}`;
  $("job-bar").style.width = `${job.progress}%`;
  $("job-pct").textContent = `${Math.floor(job.progress)}%`;
  const ran = job.started_at ? ((job.finished_at ? Date.parse(job.finished_at) : now) - Date.parse(job.started_at)) / 1000 : null;
  const stats = job.ingest ? ingestStats(job, ran) : [
    stat("total", training ? "Steps" : "Total", num(total)),
    stat("done", "Done", num(done)),
    training ? null : stat("failed", "Failed", num(failed), { class: failed ? "bad" : null }),
    stat("remaining", "Remaining", num(Math.max(0, total - done - failed))),
    stat("rate", training ? "Steps per second" : "Rate", rate(perSecond)),
    isTerminal(job.status)
      ? stat("ran", "Ran for", duration(ran))
      : stat("eta", "ETA", eta === null ? "—" : duration(eta)),
  ];
  $("job-stats").replaceChildren(...stats.filter(Boolean));
  $("job-message").hidden = !job.message;
  $("job-message").textContent = job.message || "";
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error || "";
  $("job-cancel").hidden = isTerminal(job.status);
  $("job-results").hidden = job.kind !== "embeddings";
  $("job-results").href = apiRoot + job.links.results;
}

// Ingest and reembed jobs count documents, and carry chunk counts and their own pace.
function ingestStats(job, ran) {
  const { total, done, failed } = job.counts;
  const ingest = job.ingest;
  return [
    stat("total", ingest.input_complete ? "Documents" : "Documents so far", num(total)),
    stat("done", "Done", num(done)),
    stat("failed", "Failed", num(failed), { class: failed ? "bad" : null }),
    stat("skipped", "Unchanged", num(ingest.skipped)),
    stat("chunks", "Chunks embedded", `${num(ingest.chunks.done)} / ${num(ingest.chunks.total)}`),
    // A source job (POST /collections/{name}/sources) also counts the shards its workers read.
    ingest.shards
      ? stat("shards", "Shards read", `${num(ingest.shards.done)} / ${num(ingest.shards.total)}`,
        { class: ingest.shards.failed ? "bad" : null })
      : null,
    stat("rate", "Documents per second", rate(ingest.documents_per_s || null)),
    stat("chunk-rate", "Chunks per second", rate(ingest.chunks_per_s || null)),
    isTerminal(job.status)
      ? stat("ran", "Ran for", duration(ran))
      : stat("eta", "ETA", ingest.eta_s === null ? (ingest.input_complete ? "—" : ingest.shards ? "reading the source" : "upload streaming") : duration(ingest.eta_s)),
  ];
}

function renderDetails(job, now) {
  const waited = job.started_at ? (Date.parse(job.started_at) - Date.parse(job.created_at)) / 1000 : null;
  const rows = [
    ["Id", h("span", { class: "mono" }, job.id)],
    ["Model", job.model],
    ["Created", `${absoluteTime(job.created_at)} (${relativeTime(job.created_at, now)})`],
    ["Started", job.started_at ? `${absoluteTime(job.started_at)} (queued ${duration(waited)})` : "not yet"],
    ["Finished", job.finished_at ? absoluteTime(job.finished_at) : "not yet"],
    ["Webhook", job.webhook_url || "none"],
    ["Idempotency key", job.idempotency_key || "none"],
  ];
  $("job-details").replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function renderErrors(errors, total, fullListPath = null) {
  $("errors").hidden = errors.length === 0;
  $("errors-count").textContent = total > errors.length ? `first ${errors.length} of ${num(total)}` : num(total);
  $("errors-all").hidden = !fullListPath;
  if (fullListPath) $("errors-all").href = apiRoot + fullListPath;
  $("errors-table")
    .querySelector("tbody")
    .replaceChildren(...errors.map((e) => h("tr", {}, h("td", { class: "mono" }, e.item), h("td", { class: "wrap" }, e.error))));
}

// The inputs an embedding job failed on, read from its results (only once it has ended with failures).
async function embeddingErrors(job) {
  const errors = [];
  for (let offset = 0; offset !== null && errors.length < MAX_ERRORS_SHOWN; ) {
    const page = await api(`/jobs/${job.id}/results?offset=${offset}&limit=1000&encoding_format=base64`);
    for (const item of page.data) if (item.error) errors.push({ item: `input ${item.index}`, error: item.error });
    offset = page.next_offset;
  }
  return errors.slice(0, MAX_ERRORS_SHOWN);
}

let job = null;
let errorsShownFor = null;

async function refresh() {
  try {
    job = await api(`/jobs/${encodeURIComponent(jobId)}`);
  } catch (error) {
    // A job that does not exist never will: say so once instead of polling forever.
    if (error instanceof ApiError && (error.status === 404 || error.status === 422)) {
      showError(error);
      $("job-status").textContent = "not found";
      return false;
    }
    throw error;
  }
  const now = serverNow();
  document.title = `${job.kind} ${job.id.slice(0, 8)} · ${job.status} · embedq`;
  renderSummary(job, now);
  renderDetails(job, now);
  if (job.ingest) {
    const shown = job.ingest.errors.map((e) => ({
      item: [e.document_id && `document ${e.document_id}`, e.line && `line ${e.line}`].filter(Boolean).join(", ") || "upload",
      error: e.error,
    }));
    renderErrors(shown, job.counts.failed, job.links.errors);
  } else if (TRAINING_KINDS.has(job.kind)) {
    const status = await refreshTraining(job.id);
    renderErrors(skippedLines(status), status.data.skipped_lines);
  } else if (job.kind === "embeddings" && job.counts.failed > 0 && isTerminal(job.status) && errorsShownFor !== job.id) {
    renderErrors(await embeddingErrors(job), job.counts.failed);
    errorsShownFor = job.id;
  }
  const webhooksPending = await refreshWebhooks(job, now);
  return !isTerminal(job.status) || webhooksPending;
}

openWithKey($("job-results"));

$("job-cancel").addEventListener("click", async () => {
  if (!confirm("Cancel this job? Work already running finishes its batch or step; the rest is skipped.")) return;
  $("job-cancel").disabled = true;
  try {
    job = await api(`/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
    renderSummary(job, serverNow());
  } catch (error) {
    showError(error);
  } finally {
    $("job-cancel").disabled = false;
  }
});

poll(refresh, REFRESH_MS);
