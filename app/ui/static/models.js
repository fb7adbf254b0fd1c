// Models: the server's catalog (GET /v1/models) and the aliases fine-tuning registered, refreshed every 10 s.

import { api, h, isMissingRoute, poll, serverNow, uiPath } from "./api.js";
import { absoluteTime, relativeTime } from "./format.js";

const REFRESH_MS = 10_000;
const $ = (id) => document.getElementById(id);

function loadState(model) {
  if (!model.loaded) return h("span", { class: "muted" }, "not loaded");
  const seconds = model.load_seconds === null ? "" : ` in ${model.load_seconds.toFixed(1)} s`;
  const workers = model.loads.length > 1 ? ` · ${model.loads.length} workers` : "";
  return h("span", { title: model.loads.map((l) => `${l.worker} (${l.device}, ${l.precision})`).join("\n") }, `${model.device ?? "?"}${seconds}${workers}`);
}

function catalogRow(model) {
  return h(
    "tr",
    { "data-model": model.id },
    h(
      "td",
      {},
      h("span", { class: "mono" }, model.id),
      model.alias_of ? h("div", { class: "muted" }, `alias of ${model.alias_of}`) : null,
    ),
    h("td", {}, model.family, model.hybrid ? h("span", { class: "chip", title: "sparse and ColBERT heads" }, " hybrid") : null),
    h("td", { class: "num" }, model.dimension ?? "—"),
    h("td", { class: "num" }, model.max_length ?? "—"),
    h("td", { title: model.path || "" }, model.source),
    h("td", {}, `${model.precision} · ${model.backend}`),
    h("td", { "data-loaded": String(model.loaded) }, loadState(model)),
  );
}

function renderCatalog(models) {
  $("catalog-table").querySelector("tbody").replaceChildren(...models.map(catalogRow));
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
