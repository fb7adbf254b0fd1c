// Collections: counts, model and size of each (refreshed every 5 s), and a search over the one picked.

import { ApiError, api, h, isMissingRoute, poll, serverNow, showError } from "./api.js";
import { absoluteTime, num, relativeTime } from "./format.js";

const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let selected = params.get("name");

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i += 1) n /= 1024;
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function row(collection, now) {
  const counts = collection.counts;
  const documents = counts ? `${num(counts.ready)} / ${num(counts.documents)}` : "…";
  return h(
    "tr",
    {
      "data-collection": collection.name,
      class: collection.name === selected ? "selected" : null,
      onclick: () => select(collection.name),
      title: counts ? `${num(counts.pending)} pending, ${num(counts.failed)} failed` : "",
    },
    h("td", {}, h("a", { href: `?name=${encodeURIComponent(collection.name)}` }, collection.name)),
    h("td", { class: "model", title: collection.model }, collection.model),
    h("td", { class: "num" }, collection.dimension ?? "—"),
    h("td", { class: "num", "data-count": "documents" }, documents),
    h("td", { class: "num", "data-count": "chunks" }, counts ? num(counts.chunks) : "…"),
    h("td", { class: "num", "data-count": "vectors" }, counts ? num(counts.vectors) : "…"),
    h("td", { class: "num" }, bytes(collection.size_bytes)),
    h("td", { title: absoluteTime(collection.created_at) }, relativeTime(collection.created_at, now)),
  );
}

let collections = [];

async function refresh() {
  let page;
  try {
    page = await api("/collections?limit=200");
  } catch (error) {
    if (!isMissingRoute(error)) throw error;
    $("collections-empty").textContent = "This server has no collections API.";
    $("collections-empty").hidden = false;
    return false;
  }
  // The list carries no counts; each collection's own resource does.
  collections = await Promise.all(page.data.map((c) => api(`/collections/${encodeURIComponent(c.name)}`)));
  const now = serverNow();
  $("collections-body").replaceChildren(...collections.map((c) => row(c, now)));
  $("collections-empty").hidden = collections.length > 0;
  showSearch();
}

function select(name) {
  selected = name;
  history.replaceState(null, "", `?name=${encodeURIComponent(name)}`);
  for (const tr of $("collections-body").children) tr.classList.toggle("selected", tr.dataset.collection === name);
  showSearch();
  $("search-query").focus();
}

function showSearch() {
  const collection = collections.find((c) => c.name === selected);
  $("search-card").hidden = !collection;
  if (!collection) return;
  $("search-name").textContent = collection.name;
  $("search-meta").textContent = `${collection.model} · ${collection.dimension ?? "?"} dimensions`;
}

function resultRow(hit, rank) {
  return h(
    "tr",
    { "data-document": hit.document_id },
    h("td", { class: "num" }, rank),
    h(
      "td",
      { class: "score" },
      h("span", { class: "score-track" }, h("span", { class: "score-bar", style: `width: ${Math.max(0, hit.score) * 100}%` })),
      hit.score.toFixed(4),
    ),
    h("td", { class: "mono" }, hit.document_id, h("span", { class: "muted" }, ` #${hit.chunk_index}`)),
    h("td", { class: "wrap" }, hit.text),
    h(
      "td",
      {},
      h("div", { class: "chips" }, ...Object.entries(hit.metadata).map(([k, v]) => h("span", { class: "chip" }, `${k}=${JSON.stringify(v)}`))),
    ),
  );
}

function parseFilter(text) {
  if (!text.trim()) return undefined;
  try {
    const value = JSON.parse(text);
    if (value && typeof value === "object" && !Array.isArray(value)) return value;
  } catch {
    // fall through to the message below
  }
  throw new Error('The filter must be a JSON object of metadata fields, e.g. {"lang": "en"}.');
}

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("search-submit").disabled = true;
  try {
    const body = { query: $("search-query").value, top_k: Number($("search-top-k").value) || 5 };
    const filter = parseFilter($("search-filter").value);
    if (filter) body.filter = filter;
    const result = await api(`/collections/${encodeURIComponent(selected)}/search`, { method: "POST", body });
    $("results-table").querySelector("tbody").replaceChildren(...result.data.map((hit, i) => resultRow(hit, i + 1)));
    $("results-table").hidden = result.data.length === 0;
    $("results-empty").hidden = result.data.length > 0;
    showError(null);
  } catch (error) {
    showError(error instanceof ApiError ? new Error(`Search failed: ${error.message}`) : error);
  } finally {
    $("search-submit").disabled = false;
  }
});

poll(refresh, REFRESH_MS);
