// Calls to the embedq JSON API with the API key kept in this tab's session storage, and page-wide helpers.

const KEY_NAME = "embedq.apiKey";
const apiRoot = document.body.dataset.apiRoot || "";

export class ApiError extends Error {
  constructor(status, body) {
    super(detailOf(body) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function detailOf(body) {
  if (!body) return "";
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return body.error?.message || ""; // /v1 answers errors in OpenAI's shape
}

// Milliseconds to add to Date.now() to get the server's clock (from the Date header), so a job's rate
// and ETA are right even when this machine's clock is off.
let clockOffsetMs = 0;

export function serverNow() {
  return Date.now() + clockOffsetMs;
}

function noteServerClock(response) {
  const date = Date.parse(response.headers.get("date") || "");
  if (!Number.isNaN(date)) clockOffsetMs = date + 500 - Date.now(); // Date has whole seconds: assume mid-second
}

/** Return the parsed JSON of an API call; asks for a key on 401 and retries; throws ApiError otherwise. */
export async function api(path, { method = "GET", body } = {}) {
  for (;;) {
    const key = sessionStorage.getItem(KEY_NAME);
    const headers = { accept: "application/json" };
    if (key) headers.authorization = `Bearer ${key}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(apiRoot + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    noteServerClock(response);
    if (response.status === 401) {
      await askForKey(key ? "That key was refused: enter another one." : "This server needs an API key.");
      continue;
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
}

/** Return true when ``error`` means the server has no such route (the feature is not installed there). */
export function isMissingRoute(error) {
  if (!(error instanceof ApiError) || error.status !== 404 || !error.body) return false;
  // FastAPI's own 404, in embedq's shape or (under /v1) in OpenAI's.
  return error.body.detail === "Not Found" || error.body.error?.message === "Not Found";
}

let pendingKey = null;

// One dialog for every request that got a 401 at the same time; all of them retry once it is answered.
function askForKey(reason) {
  if (pendingKey) return pendingKey;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason;
  input.value = "";
  pendingKey = new Promise((resolve) => {
    const form = document.getElementById("key-form");
    const onSubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_NAME, key);
      form.removeEventListener("submit", onSubmit);
      dialog.close();
      showKeyState();
      pendingKey = null;
      resolve();
    };
    form.addEventListener("submit", onSubmit);
  });
  dialog.showModal();
  input.focus();
  return pendingKey;
}

function showKeyState() {
  document.getElementById("key-state").hidden = !sessionStorage.getItem(KEY_NAME);
}

// Esc would leave every waiting request hanging: the dialog stays until a key is given.
document.getElementById("key-dialog").addEventListener("cancel", (event) => event.preventDefault());
document.getElementById("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_NAME);
  location.reload();
});
showKeyState();

/** Show ``error`` in the page banner, or clear the banner when ``error`` is null. */
export function showError(error) {
  const banner = document.getElementById("banner");
  banner.hidden = !error;
  banner.textContent = error ? error.message || String(error) : "";
}

/**
 * Call ``tick`` now and then every ``intervalMs`` while the tab is visible; stop when it returns false.
 * Returns a handle whose ``now()`` runs a tick at once (after a filter change, for instance).
 */
export function poll(tick, intervalMs) {
  let timer = null;
  let running = false;
  let rerun = false;
  let stopped = false;
  let failing = false; // the banner shows this poller's last error
  const live = document.getElementById("live");
  async function run() {
    if (stopped) return;
    if (running) {
      rerun = true; // the tick in flight may have read stale filters: run again as soon as it ends
      return;
    }
    clearTimeout(timer);
    if (document.hidden) return; // resumed by visibilitychange
    running = true;
    try {
      if ((await tick()) === false) stopped = true;
      if (failing) showError(null);
      failing = false;
      live?.classList.remove("stale");
    } catch (error) {
      failing = true;
      showError(error);
      live?.classList.add("stale");
    } finally {
      running = false;
    }
    if (stopped) return;
    if (rerun) {
      rerun = false;
      run();
    } else {
      timer = setTimeout(run, intervalMs);
    }
  }
  document.addEventListener("visibilitychange", () => document.hidden || run());
  run();
  return { now: run };
}

/** Return an element: ``h("td", {class: "num"}, "3")``; children may be strings, nodes or null. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "style") el.style.cssText = value; // the CSSOM: the page's CSP refuses style attributes
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Return the path of a dashboard page under this server's root. */
export function uiPath(path) {
  return `${apiRoot}/ui${path}`;
}

/**
 * Make ``link`` open its API URL in a new tab with the stored key: a plain link would go without it and get a
 * 401 when auth is on. The JSON is fetched with ``api`` and shown from a blob: URL of this origin.
 */
export function openWithKey(link) {
  link.addEventListener("click", async (event) => {
    event.preventDefault();
    const path = link.getAttribute("href").slice(apiRoot.length);
    const opened = window.open("", "_blank"); // now, while the click still counts as the person's
    try {
      const data = await api(path);
      const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
      if (opened) opened.location.href = URL.createObjectURL(blob);
    } catch (error) {
      opened?.close();
      showError(error);
    }
  });
}
