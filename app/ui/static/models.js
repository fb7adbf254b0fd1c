// Models: the server's catalog (GET /v1/models, OpenAI's list shape) and the aliases fine-tuning registered.

import { api, h, isMissingRoute, poll, serverNow, uiPath } from "./api.js";
import { absoluteTime, relativeTime } from "./format.js";

const REFRESH_MS = 10_000;
const $ = (id) => document.getElementById(id);
// OpenAI's fields first; whatever else this server reports about a model follows in the order it comes.
const LEADING = ["id", "owned_by"];
const HIDDEN = new Set(["object", "created"]);

function cell(value) {
  if (value === null || value === undefined) return h("td", { class: "muted" }, "—");
  if (Array.isArray(value)) return h("td", {}, h("div", { class: "chips" }, ...value.map((v) => h("span", { class: "chip" }, String(v)))));
  if (typeof value === "object") {
    return h("td", {}, h("div", { class: "chips" }, ...Object.entries(value).map(([k, v]) => h("span", { class: "chip" }, `${k}=${JSON.stringify(v)}`))));
  }
  return h("td", { class: typeof value === "number" ? "num" : null }, String(value));
}

function renderCatalog(models) {
  const keys = [...new Set(models.flatMap((m) => Object.keys(m)))].filter((k) => !HIDDEN.has(k));
  const columns = [...LEADING.filter((k) => keys.includes(k)), ...keys.filter((k) => !LEADING.includes(k))];
  $("catalog-head").replaceChildren(h("tr", {}, ...columns.map((k) => h("th", {}, k.replaceAll("_", " ")))));
  $("catalog-table")
    .querySelector("tbody")
    .replaceChildren(...models.map((m) => h("tr", { "data-model": m.id }, ...columns.map((k) => cell(m[k])))));
  $("catalog-table").hidden = models.length === 0;
  $("catalog-empty").hidden = models.length > 0;
  $("catalog-empty").textContent = "The server lists no model.";
}

function tunedRow(model, now) {
  return h(
    "tr",
    { "data-model": model.name },
    h("td", { class: "mono" }, model.name),
    h("td", {}, h("span", { class: "pill" }, model.kind)),
    h("td", {}, model.base),
    h("td", { class: "num" }, model.dimension),
    h(
      "td",
      {},
      model.created_by_job
        ? h("a", { href: uiPath(`/jobs/${model.created_by_job}`), class: "mono" }, model.created_by_job.slice(0, 8))
        : "—",
    ),
    h("td", { title: absoluteTime(model.created_at) }, relativeTime(model.created_at, now)),
  );
}

async function optional(path) {
  try {
    return await api(path);
  } catch (error) {
    if (isMissingRoute(error)) return null;
    throw error;
  }
}

async function refresh() {
  const [catalog, tuned] = await Promise.all([optional("/v1/models"), optional("/fine-tuned-models")]);
  const now = serverNow();
  if (catalog) {
    renderCatalog(catalog.data);
  } else {
    $("catalog-empty").textContent = "This server has no model catalog (GET /v1/models).";
    $("catalog-empty").hidden = false;
  }
  $("tuned").hidden = tuned === null;
  if (tuned) {
    $("tuned-table").querySelector("tbody").replaceChildren(...tuned.map((m) => tunedRow(m, now)));
    $("tuned-table").hidden = tuned.length === 0;
    $("tuned-empty").hidden = tuned.length > 0;
  }
}

poll(refresh, REFRESH_MS);
