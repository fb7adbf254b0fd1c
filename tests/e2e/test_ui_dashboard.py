"""The dashboard in a real headless Chromium against a real API and worker: what a person sees at /ui.

Set EMBEDQ_UI_SCREENSHOTS=docs/img to write the screenshots of docs/guide/dashboard.md while the tests run.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
from pytest_httpserver import HTTPServer
from support.processes import ManagedProcess, start_api
from support.texts import SENTENCES, mixed_texts

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JOB_TIMEOUT_MS = 180_000  # a shared 2-core machine: generous, and never a claim about speed
UI_TIMEOUT_MS = 20_000
SCREENSHOTS = os.environ.get("EMBEDQ_UI_SCREENSHOTS")

expect.set_options(timeout=UI_TIMEOUT_MS)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Yield a headless Debian Chromium with a fresh profile, driven by Playwright (no downloaded browser)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 800},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        yield context
        context.close()


class Tab:
    """A browser tab that records the page's script errors, so a test fails on a broken page."""

    def __init__(self, context: BrowserContext) -> None:
        self.page: Page = context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.on("console", self._console)

    def _console(self, message) -> None:
        # Chromium logs every 4xx as a failed resource: a 401 is how the page learns it needs a key, and a
        # 404 how it learns an optional API is missing. Errors the page does not expect go to its banner.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {message.text}")

    def screenshot(self, name: str) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            # animations="disabled" runs transitions (a progress bar filling up) to their end first.
            self.page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True, animations="disabled")

    def close(self) -> None:
        banner = self.page.locator("#banner")
        if banner.count() and banner.is_visible():
            self.errors.append(f"banner: {banner.text_content()}")
        self.page.close()
        assert not self.errors, self.errors


@pytest.fixture
def tab(chromium: BrowserContext) -> Iterator[Tab]:
    opened = Tab(chromium)
    yield opened
    opened.close()


def texts(n: int, seed: int) -> list[str]:
    return [t for t in mixed_texts(n * 2, seed) if t.strip()][:n]


def post_job(client: httpx.Client, inputs: list[str], **fields: str) -> dict:
    created = client.post("/jobs/embeddings", json={"input": inputs, **fields})
    assert created.status_code == 202, created.text
    return created.json()


def job_row(page: Page, job_id: str):
    return page.locator(f'tr[data-job-id="{job_id}"]')


def test_jobs_list_shows_a_job_run_to_100_percent_live(
    api, worker, clean_state, tab: Tab, httpserver_ipv4: HTTPServer
) -> None:
    httpserver_ipv4.expect_request("/ui-hook", method="POST").respond_with_data("thanks")
    page = tab.page
    page.goto(f"{api.base_url}/ui")
    expect(page.locator("#jobs-empty")).to_be_visible()

    # Created after the page loaded: only the live refresh can show it.
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        small = post_job(client, texts(40, seed=1))
        big = post_job(client, texts(300, seed=2), webhook_url=httpserver_ipv4.url_for("/ui-hook"))
    row = job_row(page, big["id"])
    expect(row).to_be_visible()
    expect(row.locator("td").nth(1)).to_have_text("embeddings")
    expect(job_row(page, small["id"])).to_be_visible()
    if SCREENSHOTS:
        with httpx.Client(base_url=api.base_url, timeout=30) as client:
            later = post_job(client, texts(500, seed=3))
            client.post(f"/jobs/{later['id']}/cancel")  # a third status for the picture
        expect(row).to_have_attribute("data-status", "running", timeout=JOB_TIMEOUT_MS)
        tab.screenshot("ui-jobs.png")

    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    expect(row.locator(".pct")).to_have_text("100%")
    expect(row.locator(".fill")).to_have_attribute("style", re.compile(r"^width: 100%;?$"))
    expect(row.locator(".pill")).to_have_text("succeeded")
    expect(row.locator("td").nth(4)).to_have_text(re.compile(r"^[\d.,]+ /s$"))  # rate from counts and timestamps

    # Filters query the API and stay in the URL.
    page.select_option("#filter-status", "failed")
    expect(page.locator("#jobs-empty")).to_be_visible()
    expect(row).to_have_count(0)
    assert "status=failed" in page.url
    page.select_option("#filter-status", "succeeded")
    expect(row).to_be_visible()
    page.reload()
    expect(page.locator("#filter-status")).to_have_value("succeeded")
    expect(row).to_be_visible()

    row.click()
    page.wait_for_url(f"**/ui/jobs/{big['id']}")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#job-pct")).to_have_text("100%")
    expect(page.locator('[data-stat="total"] dd')).to_have_text("300")
    expect(page.locator('[data-stat="done"] dd')).to_have_text("300")
    expect(page.locator('[data-stat="failed"] dd')).to_have_text("0")
    expect(page.locator('[data-stat="rate"] dd')).to_have_text(re.compile(r"/s$"))
    expect(page.locator("#job-message")).to_have_text("embedded 300 of 300 inputs")
    expect(page.locator("#job-cancel")).to_be_hidden()
    expect(page.locator("#job-results")).to_have_attribute("href", f"/jobs/{big['id']}/results")
    # The page keeps polling after the job ends until its webhook event has settled.
    delivery = page.locator("#webhooks-table tbody tr")
    expect(delivery).to_have_count(1, timeout=JOB_TIMEOUT_MS)
    expect(delivery.locator("td").nth(1)).to_have_text("job.succeeded")
    expect(delivery.locator("td").nth(3)).to_have_text("HTTP 200")
    expect(page.locator("#webhook-events li .pill")).to_have_text("succeeded")
    tab.screenshot("ui-job.png")


@pytest.fixture(scope="module")
def api_with_keys(service_env: dict[str, str]) -> Iterator[ManagedProcess]:
    """Yield an API process that requires the key ``ui-test-key``."""
    process = start_api({**service_env, "EMBEDQ_API_KEYS": '["ui-test-key"]', "EMBEDQ_AUTH_DISABLED": "false"})
    yield process
    process.stop()


def test_api_key_is_asked_once_and_kept_for_the_tab(api_with_keys, clean_state, tab: Tab) -> None:
    base = api_with_keys.base_url
    headers = {"authorization": "Bearer ui-test-key"}
    job = httpx.post(f"{base}/jobs/embeddings", json={"input": ["one text"]}, headers=headers, timeout=30).json()
    page = tab.page
    page.goto(f"{base}/ui")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    page.fill("#key-input", "wrong-key")
    page.click("#key-submit")
    expect(page.locator("#key-reason")).to_have_text(re.compile("refused"))
    page.fill("#key-input", "ui-test-key")
    page.click("#key-submit")
    expect(dialog).to_be_hidden()
    expect(job_row(page, job["id"])).to_be_visible()
    expect(page.locator("#key-state")).to_be_visible()

    # Another page of the same tab uses the stored key without asking.
    job_row(page, job["id"]).click()
    expect(page.locator('[data-stat="total"] dd')).to_have_text("1")
    expect(dialog).to_be_hidden()

    page.click("#forget-key")
    expect(dialog).to_be_visible()


def training_pairs(n: int) -> str:
    """Return ``n`` TSV lines ``query<TAB>passage`` in the tiny model's vocabulary, plus one malformed line."""
    nouns = "cat dog house river mountain city music book water food language machine".split()
    colours = "red green blue small large fast slow".split()
    lines = [
        f"{colours[i % len(colours)]} {nouns[i % len(nouns)]} {i}\t"
        f"the {colours[i % len(colours)]} {nouns[i % len(nouns)]} is in the {nouns[(i * 7 + 3) % len(nouns)]} {i}"
        for i in range(n)
    ]
    return "\n".join([*lines, "a line without a tab"])


def test_training_job_page_draws_its_loss_and_evaluation(
    api, worker, clean_state, service_env, chromium: BrowserContext, tab: Tab
) -> None:
    from support.tiny_models import make_tiny_bert

    # A tiny random model keeps the test fast (the README's screenshot trains longer, for a longer curve).
    base = "ui-tiny-base"
    make_tiny_bert(Path(service_env["EMBEDQ_MODELS_DIR"]) / base)
    # 72 pairs: 32 held out, 40 to train on in batches of 4: 10 steps an epoch, a loss report every 5.
    body = {"text_content": training_pairs(72), "model_name": "ui-tuned", "base_model": base}
    body |= {"epochs": 8 if SCREENSHOTS else 2, "batch_size": 4, "overwrite": True}
    created = httpx.post(f"{api.base_url}/fine-tune", json=body, timeout=30)
    assert created.status_code == 200, created.text
    job_id = created.json()["job_id"]

    page = tab.page
    page.goto(f"{api.base_url}/ui/jobs/{job_id}")
    expect(page.locator("#job-kind")).to_have_text("fine tune")
    expect(page.locator("#training")).to_be_visible()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=2 * JOB_TIMEOUT_MS)

    chart = page.locator("#loss-chart svg")
    expect(chart).to_be_visible()
    assert int(chart.get_attribute("data-points")) >= 1
    expect(chart.locator("path.line")).to_have_attribute("d", re.compile(r"^M[\d.]+,[\d.]+"))
    expect(page.locator("#training-step")).to_contain_text("served as ui-tuned")
    expect(page.locator("#job-stats")).not_to_contain_text("null")

    # Every report is kept server-side, so a tab opened after the job ended still draws the whole curve.
    status = httpx.get(f"{api.base_url}/train-status/{job_id}", timeout=30).json()
    assert [p["step"] for p in status["loss_history"]] == list(range(5, status["total_steps"] + 1, 5))
    late = Tab(chromium)
    try:
        late.page.goto(f"{api.base_url}/ui/jobs/{job_id}")
        late_chart = late.page.locator("#loss-chart svg")
        expect(late_chart).to_have_attribute("data-points", str(len(status["loss_history"])))
        expect(late.page.locator("#loss-note")).to_be_visible()
    finally:
        late.close()

    # The eval curve: the base at step 0 and each evaluation during training, and the step that was kept.
    eval_chart = page.locator("#eval-chart svg")
    expect(eval_chart).to_have_attribute("data-points", str(len(status["eval_history"])))
    assert status["eval_history"][0]["step"] == 0 and status["best_step"] is not None
    expect(page.locator("#eval-best")).to_have_text(f"step {status['best_step']}")

    rows = page.locator("#eval-table tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.locator("td.ci").first).to_have_text(re.compile(r"^\d\.\d{3}–\d\.\d{3}$"))
    expect(rows.locator("td:first-child")).to_have_text(["recall@1", "recall@10", "mrr@10"])
    for cell in rows.locator("td.num").all():
        expect(cell).to_have_text(re.compile(r"^[+-]?\d\.\d{3}$"))

    # The malformed line is listed as an error, not dropped.
    expect(page.locator("#errors-table tbody tr")).to_have_count(1)
    expect(page.locator("#errors-table tbody td").first).to_have_text(re.compile(r"^line \d+$"))
    tab.screenshot("ui-training-job.png")

    # The models page lists the alias with its base, kind and the job that made it.
    page.goto(f"{api.base_url}/ui/models")
    tuned = page.locator('#tuned-table tr[data-model="ui-tuned"]')
    cells = ["ui-tuned", "full", base, re.compile(r"^\d+$"), job_id[:8], re.compile("ago|now")]
    expect(tuned.locator("td")).to_have_text(cells)
    expect(tuned.locator("a")).to_have_attribute("href", f"/ui/jobs/{job_id}")
    # The catalog lists it next to the default model, each with its family, dimension and source.
    expect(page.locator('#catalog-table tr[data-model="ui-tuned"] td').nth(4)).to_have_text("models_dir")
    default = page.locator('#catalog-table tr[data-model="sentence-transformers/all-MiniLM-L6-v2"] td')
    expect(default.nth(2)).to_have_text("384")
    tab.screenshot("ui-models.png")


PLANTED = "The lighthouse keeper polished the great glass lens every evening before the ships came in."


def test_collections_page_counts_and_finds_the_planted_document(api, worker, clean_state, tab: Tab) -> None:
    documents = [{"id": f"s{i}", "text": text, "metadata": {"n": i}} for i, text in enumerate(SENTENCES)]
    documents.append({"id": "planted", "text": PLANTED, "metadata": {"source": "test"}})
    documents.append({"id": "no-text", "metadata": {"broken": True}})  # fails this document only
    good = len(documents) - 1
    with httpx.Client(base_url=api.base_url, timeout=60) as client:
        created = client.post("/collections", json={"name": "ui-docs", "chunking": {"max_tokens": 128}})
        assert created.status_code == 201, created.text
        job = client.post("/collections/ui-docs/documents", json=documents)
        assert job.status_code == 202, job.text

    page = tab.page
    page.goto(f"{api.base_url}/ui/collections")
    row = page.locator('tr[data-collection="ui-docs"]')
    expect(row).to_be_visible()
    # Counts refresh live while the ingest job runs. The document without text never becomes part of the
    # collection; its job says why (below).
    expect(row.locator('[data-count="documents"]')).to_have_text(f"{good} / {good}", timeout=JOB_TIMEOUT_MS)
    expect(row.locator('[data-count="vectors"]')).to_have_text(str(good))

    row.click()
    page.fill("#search-query", "who cleans the lens of the lighthouse?")
    page.click("#search-submit")
    results = page.locator("#results-table tbody tr")
    expect(results.first).to_have_attribute("data-document", "planted")
    expect(results).to_have_count(5)
    expect(results.first.locator(".score")).to_have_text(re.compile(r"^0\.\d{4}$"))
    expect(results.first).to_contain_text('source="test"')
    tab.screenshot("ui-collections.png")

    # The ingest job's page counts documents and chunks, and names the document that failed.
    page.goto(f"{api.base_url}/ui/jobs/{job.json()['id']}")
    expect(page.locator("#job-cancel")).to_be_hidden()  # it has ended
    expect(page.locator('[data-stat="total"] dd')).to_have_text(str(len(documents)))
    expect(page.locator('[data-stat="failed"] dd')).to_have_text("1")
    expect(page.locator('[data-stat="chunks"] dd')).to_have_text(f"{good} / {good}")
    error = page.locator("#errors-table tbody tr")
    expect(error).to_have_count(1)
    expect(error.locator("td").first).to_have_text(re.compile(r"^document no-text"))
    expect(page.locator("#errors-all")).to_have_attribute("href", f"/jobs/{job.json()['id']}/errors")
    tab.screenshot("ui-ingest-job.png")


def test_results_json_opens_with_the_key_and_pages_refuse_framing(api_with_keys, worker, clean_state, tab: Tab) -> None:
    base = api_with_keys.base_url
    headers = {"authorization": "Bearer ui-test-key"}
    job = httpx.post(f"{base}/jobs/embeddings", json={"input": ["one text", "two"]}, headers=headers, timeout=30)
    job_id = job.json()["id"]
    page = tab.page
    response = page.goto(f"{base}/ui/jobs/{job_id}")
    assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    page.fill("#key-input", "ui-test-key")
    page.click("#key-submit")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    # The inline widths survive the policy (set through the CSSOM); a refused inline style would log an error.
    expect(page.locator("#job-pct")).to_have_text("100%")
    with page.context.expect_page() as opened:
        page.click("#job-results")
    results = opened.value
    results.wait_for_load_state()
    expect(results.locator("body")).to_contain_text('"embedding"')
    assert results.url.startswith("blob:") and '"total": 2' in results.locator("body").inner_text()
    results.close()
    # Framed by another page (here, a data: URL page), the dashboard does not render.
    framing = page.context.new_page()
    framing.set_content(f'<iframe id="f" src="{base}/ui"></iframe>')
    framing.wait_for_timeout(1000)
    frame = framing.frame_locator("#f")
    expect(frame.locator("#key-dialog")).to_have_count(0)
    framing.close()
