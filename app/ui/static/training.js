// A fine-tuning job's extra view: step, epoch, loss curve and the before/after evaluation, from /train-status.

import { api, h } from "./api.js";
import { lineChart } from "./chart.js";
import { duration, num } from "./format.js";

export const TRAINING_KINDS = new Set(["fine_tune", "fine_tune_lora"]);

const $ = (id) => document.getElementById(id);
const METRIC_ORDER = ["recall@1", "recall@10", "mrr@10"];

/** Fetch /train-status and render it; returns the status so the page can show the trained model's alias. */
export async function refreshTraining(jobId) {
  const status = await api(`/train-status/${encodeURIComponent(jobId)}`);
  $("training").hidden = false;
  renderStep(status);
  renderChart(status);
  renderEvalChart(status);
  renderEval(status.eval || {});
  return status;
}

function renderStep(status) {
  const parts = [`step ${num(status.steps)} of ${num(status.total_steps)}`, `epoch ${status.epoch.toFixed(2)}`];
  if (status.loss !== null) parts.push(`loss ${status.loss.toFixed(4)}`);
  if (status.eta_seconds !== null) parts.push(`ETA ${duration(status.eta_seconds)}`);
  if (status.model) parts.push(`served as ${status.model}`);
  $("training-step").textContent = parts.join(" · ");
  const data = status.data;
  $("training-data").textContent =
    `${num(data.pairs)} pairs (${num(data.train_pairs)} to train, ${num(data.eval_pairs)} held out` +
    `${data.with_negatives ? `, ${num(data.with_negatives)} with hard negatives` : ""}); ` +
    `${num(data.skipped_lines)} ${data.skipped_lines === 1 ? "line" : "lines"} skipped`;
}

// The whole curve comes from the server (every report the job made), so a page opened late draws it all.
function renderChart(status) {
  const box = $("loss-chart");
  const points = status.loss_history.map((p) => ({ x: p.step, y: p.loss }));
  if (points.length === 0) {
    box.replaceChildren(h("p", { class: "empty" }, "No loss reported yet."));
    return;
  }
  box.replaceChildren(lineChart(points, { width: box.clientWidth || 720 }));
  $("loss-note").hidden = false;
}

// The eval curve: held-out MRR@10 at each evaluation during training, from step 0 (the base) on.
function renderEvalChart(status) {
  const points = (status.eval_history || [])
    .filter((p) => typeof p["mrr@10"] === "number")
    .map((p) => ({ x: p.step, y: p["mrr@10"] }));
  const box = $("eval-chart");
  box.hidden = points.length === 0;
  $("eval-note").hidden = points.length === 0;
  if (points.length === 0) return;
  box.replaceChildren(lineChart(points, { width: box.clientWidth || 720, yLabel: "MRR@10" }));
  $("eval-best").textContent = status.best_step === null || status.best_step === undefined ? "none yet" : `step ${num(status.best_step)}`;
}

function rank(metric) {
  const known = METRIC_ORDER.indexOf(metric);
  return known === -1 ? METRIC_ORDER.length : known;
}

function renderEval(evaluation) {
  const before = evaluation.base || {};
  const after = evaluation.trained || {};
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])]
    .filter((name) => !["queries", "corpus", "ci95"].includes(name))
    .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  const interval = (side, name) => {
    const ci = (side.ci95 || {})[name];
    return ci ? `${ci[0].toFixed(3)}–${ci[1].toFixed(3)}` : "—";
  };
  const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "—");
  const rows = names.map((name) => {
    const change = typeof before[name] === "number" && typeof after[name] === "number" ? after[name] - before[name] : null;
    const sign = change === null ? "" : change > 0 ? "+" : "";
    return h(
      "tr",
      { "data-metric": name },
      h("td", {}, name),
      h("td", { class: "num" }, fmt(before[name])),
      h("td", { class: "num" }, fmt(after[name])),
      h("td", { class: `num ${change > 0 ? "good" : change < 0 ? "bad" : ""}` }, change === null ? "—" : `${sign}${change.toFixed(3)}`),
      h("td", { class: "ci" }, interval(before, name)),
      h("td", { class: "ci" }, interval(after, name)),
    );
  });
  $("eval-table").querySelector("tbody").replaceChildren(...rows);
  $("eval-table").hidden = rows.length === 0;
  const size = before.queries ?? after.queries;
  $("eval-empty").textContent = rows.length
    ? `${num(size)} held-out queries searching ${num(before.corpus ?? after.corpus)} passages; "before" is the base model; ` +
      "the intervals are bootstrap 95% intervals over the queries: a change within them is noise."
    : "Measured on the held-out pairs before and after training.";
}

/** Return the lines the job skipped as error rows: [{item, error}]. */
export function skippedLines(status) {
  return status.data.skipped_examples.map((s) => ({ item: `line ${s.line}`, error: s.reason }));
}
