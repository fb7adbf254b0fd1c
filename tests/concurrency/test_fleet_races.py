"""Races a fleet runs into, for real: two worker processes of two pool processes each on the same queues, two
API processes, and many requests at once (see ``support.fleet``).

Each race runs several rounds in one test, so that a rare interleaving gets its chances to show.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
from celery import Celery
from pytest_httpserver import HTTPServer
from support.fleet import MODEL, Fleet, at_once, fleet
from support.texts import SENTENCES
from support.waiting import wait_until

pytestmark = pytest.mark.e2e

TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")


@pytest.fixture(scope="module")
def the_fleet(service_env: dict[str, str]) -> Iterator[Fleet]:
    with fleet(service_env, Path(service_env["EMBEDQ_MODELS_DIR"])) as started:
        yield started


@pytest.fixture
def ok_fleet(the_fleet: Fleet) -> Iterator[Fleet]:
    """The fleet, checked after the test: every process alive, and no deadlock in Postgres meanwhile."""
    since = the_fleet.postgres_log_size()
    yield the_fleet
    the_fleet.alive()
    deadlocks = the_fleet.deadlocks(since)
    assert not deadlocks, "\n\n".join(deadlocks)


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{seed}-{i}. " + " ".join(rng.choices(SENTENCES, k=rng.randint(1, 3))) for i in range(n)]


def post_job(fleet: Fleet, api: int, body: dict, key: str | None = None) -> httpx.Response:
    with fleet.client(key, api) as client:
        return client.post("/jobs/embeddings", json=body)


def received(server: HTTPServer, path: str) -> list[dict]:
    """Return the events the receiver got at ``path``, parsed."""
    return [json.loads(request.get_data(as_text=True)) for request, _ in server.log if request.path == path]


def terminal_events(fleet: Fleet, job_ids: list[str]) -> dict[str, list[str]]:
    """Return each job's terminal webhook events (their types), as recorded in Postgres."""
    rows = fleet.rows(
        "SELECT job_id, type FROM webhook_events WHERE job_id = ANY(:ids) AND type = ANY(:types) ORDER BY created_at",
        ids=[uuid.UUID(j) for j in job_ids],
        types=list(TERMINAL_EVENTS),
    )
    events: dict[str, list[str]] = {j: [] for j in job_ids}
    for job_id, kind in rows:
        events[str(job_id)].append(kind)
    return events


def embedding_counts(fleet: Fleet, job_id: str) -> dict:
    """Return a job's row (status and counts) next to what its results hold: vectors and errors stored."""
    row = fleet.rows(
        "SELECT j.status, j.total, j.done, j.failed, count(r.embedding) AS vectors, count(r.error) AS errors "
        "FROM jobs j LEFT JOIN job_results r ON r.job_id = j.id WHERE j.id = :id GROUP BY j.id",
        id=uuid.UUID(job_id),
    )[0]
    return dict(row._mapping)


def test_the_last_batches_of_many_jobs_finishing_together_finalize_each_once(
    ok_fleet: Fleet, httpserver_ipv4: HTTPServer
) -> None:
    rounds, jobs, inputs = 3, 6, 24  # 12 batches of 2 per job, 72 per round, on 4 pool processes
    for r in range(rounds):
        # A URL nobody registered: the first event due creates its endpoint, and many are due at once.
        path = f"/fleet/finished-{r}"
        httpserver_ipv4.expect_request(path, method="POST").respond_with_data("ok")
        url = httpserver_ipv4.url_for(path)
        bodies = [{"input": texts(inputs, seed=100 * r + j), "model": MODEL, "webhook_url": url} for j in range(jobs)]
        answers = at_once([partial(post_job, ok_fleet, j, b) for j, b in enumerate(bodies)])
        assert [a.status_code for a in answers] == [202] * jobs, [a.text for a in answers]
        job_ids = [a.json()["id"] for a in answers]

        assert set(ok_fleet.wait_jobs(job_ids).values()) == {"succeeded"}
        ok_fleet.wait_quiet()
        for job_id in job_ids:
            counts = embedding_counts(ok_fleet, job_id)
            assert counts == {
                "status": "succeeded", "total": inputs, "done": inputs, "failed": 0, "vectors": inputs, "errors": 0
            }, (job_id, counts)  # fmt: skip
        assert terminal_events(ok_fleet, job_ids) == {j: ["job.succeeded"] for j in job_ids}
        logs = "".join(w.log_text() for w in ok_fleet.workers)
        assert {j: logs.count(f"job {j} finished: succeeded") for j in job_ids} == dict.fromkeys(job_ids, 1)
        events = received(httpserver_ipv4, path)
        assert sorted(e["data"]["id"] for e in events) == sorted(job_ids), events
        assert all(e["type"] == "job.succeeded" and e["data"]["counts"]["done"] == inputs for e in events), events
        endpoints = ok_fleet.scalar("SELECT count(*) FROM webhook_endpoints WHERE url = :url", url=url)
        assert endpoints == 1, f"{endpoints} endpoints were auto-created for one webhook URL"


def test_one_batch_jobs_finishing_at_once_share_one_endpoint_for_their_url(
    ok_fleet: Fleet, httpserver_ipv4: HTTPServer
) -> None:
    # Jobs of one batch each, posted at once: they finish within milliseconds of each other, and each
    # finds no endpoint for the URL it names when its event is due.
    rounds, jobs = 4, 8
    for r in range(rounds):
        path = f"/fleet/together-{r}"
        httpserver_ipv4.expect_request(path, method="POST").respond_with_data("ok")
        url = httpserver_ipv4.url_for(path)
        bodies = [{"input": texts(2, seed=200 * r + j), "model": MODEL, "webhook_url": url} for j in range(jobs)]
        answers = at_once([partial(post_job, ok_fleet, j, b) for j, b in enumerate(bodies)])
        assert [a.status_code for a in answers] == [202] * jobs, [a.text for a in answers]
        job_ids = [a.json()["id"] for a in answers]
        assert set(ok_fleet.wait_jobs(job_ids).values()) == {"succeeded"}
        ok_fleet.wait_quiet()
        endpoints = ok_fleet.scalar("SELECT count(*) FROM webhook_endpoints WHERE url = :url", url=url)
        assert endpoints == 1, f"{endpoints} endpoints were created for one webhook URL"
        assert terminal_events(ok_fleet, job_ids) == {j: ["job.succeeded"] for j in job_ids}
        assert sorted(e["data"]["id"] for e in received(httpserver_ipv4, path)) == sorted(job_ids)


@pytest.mark.parametrize("limit", [None, 1], ids=["unlimited-key", "key-at-its-limit"])
def test_identical_idempotent_posts_at_once_make_one_job(ok_fleet: Fleet, limit: int | None) -> None:
    # With a limit of one job, the first request takes the key's only slot: the others are the same
    # request, so they must get its job, not a 429.
    key = ok_fleet.new_key(max_concurrent_jobs=limit)
    rounds, posts = 4, 8
    for r in range(rounds):
        body = {"input": texts(6, seed=1000 + r), "model": MODEL, "idempotency_key": f"same-{uuid.uuid4().hex}"}
        answers = at_once([partial(post_job, ok_fleet, i, body, key) for i in range(posts)])
        assert sorted(a.status_code for a in answers) == [200] * (posts - 1) + [202], [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1, [a.text for a in answers]
        job_id = answers[0].json()["id"]
        jobs = ok_fleet.scalar("SELECT count(*) FROM jobs WHERE idempotency_key = :k", k=body["idempotency_key"])
        assert jobs == 1
        assert ok_fleet.wait_jobs([job_id]) == {job_id: "succeeded"}
    ok_fleet.wait_quiet()


@contextmanager
def consumers_paused(fleet: Fleet, queues: list[str]) -> Iterator[None]:
    """Stop every worker taking tasks from ``queues`` (jobs stay queued, so none frees a slot), then resume."""
    control = Celery("embedq-fleet-tests", broker=fleet.stack.redis.url())
    nodes = [w.nodename for w in fleet.workers if w.nodename]
    replied = {"destination": nodes, "reply": True, "timeout": 30, "limit": len(nodes)}
    try:
        for queue in queues:
            replies = control.control.cancel_consumer(queue, **replied)
            assert len(replies) == len(nodes), replies
        yield
    finally:
        for queue in queues:
            control.control.add_consumer(queue, **replied)
        control.close()


def upload(fleet: Fleet, api: int, collection: str, documents: list[dict], key: str | None = None) -> httpx.Response:
    body = "".join(json.dumps(d) + "\n" for d in documents).encode()
    with fleet.client(key, api) as client:
        return client.post(
            f"/collections/{collection}/documents", content=body, headers={"Content-Type": "application/x-ndjson"}
        )


def create_collection(fleet: Fleet, name: str, key: str | None = None) -> None:
    with fleet.client(key) as client:
        made = client.post(
            "/collections", json={"name": name, "model": MODEL, "chunking": {"max_tokens": 16, "overlap_tokens": 4}}
        )
    assert made.status_code == 201, made.text


def test_parallel_submits_never_pass_a_keys_concurrent_job_limit(ok_fleet: Fleet) -> None:
    limit, embeds, uploads, rounds = 3, 8, 4, 3
    key = ok_fleet.new_key(max_concurrent_jobs=limit)
    create_collection(ok_fleet, "limited", key)
    documents = [{"id": f"l{i}", "text": t} for i, t in enumerate(texts(4, seed=7))]
    with consumers_paused(ok_fleet, ["inference", "bulk"]):
        for r in range(rounds):
            bodies = [{"input": texts(4, 50 * r + i), "model": MODEL} for i in range(embeds)]
            calls = [partial(post_job, ok_fleet, i, body, key) for i, body in enumerate(bodies)]
            calls += [partial(upload, ok_fleet, i, "limited", documents, key) for i in range(uploads)]
            answers = at_once(calls)
            admitted = [a for a in answers if a.status_code == 202]
            refused = [a for a in answers if a.status_code == 429]
            assert len(admitted) == limit and len(refused) == len(calls) - limit, [a.text for a in answers]
            for answer in refused:
                assert answer.json()["max_concurrent_jobs"] == limit and "wait for one to finish" in answer.text
            with ok_fleet.client(key) as client:
                active = client.get("/jobs", params={"limit": 100}).json()["data"]
                assert len([j for j in active if j["status"] in ("queued", "running")]) == limit
                for answer in admitted:
                    cancelled = client.post(f"/jobs/{answer.json()['id']}/cancel")
                    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    ok_fleet.wait_quiet()


def test_concurrent_uploads_of_the_same_documents_store_each_once(ok_fleet: Fleet) -> None:
    rounds, uploads, ids = 3, 6, 4
    for r in range(rounds):
        collection = f"same-docs-{r}"
        create_collection(ok_fleet, collection)
        rng = random.Random(r)
        shared = texts(ids, seed=500 + r)
        sent: dict[str, set[str]] = {f"doc-{i}": set() for i in range(ids)}
        bodies = []
        for u in range(uploads):
            # Each upload holds every id, in an order of its own; half the documents differ between uploads.
            docs = [{"id": f"doc-{i}", "text": shared[i] if i % 2 else f"{shared[i]} variant {u}"} for i in range(ids)]
            rng.shuffle(docs)
            for d in docs:
                sent[d["id"]].add(d["text"])
            bodies.append(docs)
        answers = at_once([partial(upload, ok_fleet, u, collection, b) for u, b in enumerate(bodies)])
        assert [a.status_code for a in answers] == [202] * uploads, [a.text for a in answers if a.status_code != 202]
        job_ids = [a.json()["id"] for a in answers]
        assert set(ok_fleet.wait_jobs(job_ids).values()) == {"succeeded"}, ok_fleet.rows(
            "SELECT status, error FROM jobs WHERE id = ANY(:ids)", ids=[uuid.UUID(j) for j in job_ids]
        )
        ok_fleet.wait_quiet()
        assert_each_document_stored_once(ok_fleet, collection, sent)


def assert_each_document_stored_once(fleet: Fleet, collection: str, sent: dict[str, set[str]]) -> None:
    """Check every document is there once, ready, with one set of chunks cut from its own text, each with one vector."""
    cid = fleet.scalar("SELECT id FROM collections WHERE name = :n", n=collection)
    version = fleet.scalar("SELECT id FROM collection_versions WHERE collection_id = :c AND status = 'active'", c=cid)
    documents = fleet.rows(
        "SELECT id, external_id, text, status, chunk_count FROM documents WHERE collection_id = :c", c=cid
    )
    assert sorted(d.external_id for d in documents) == sorted(sent)
    chunks = fleet.rows(
        "SELECT c.document_id, c.idx, c.text, c.start_char, c.end_char FROM chunks c "
        "JOIN documents d ON d.id = c.document_id WHERE d.collection_id = :c ORDER BY c.document_id, c.idx",
        c=cid,
    )
    for doc in documents:
        assert doc.status == "ready" and doc.text in sent[doc.external_id], doc
        own = [c for c in chunks if c.document_id == doc.id]
        assert [c.idx for c in own] == list(range(doc.chunk_count)) and own, (doc, own)
        assert all(doc.text[c.start_char : c.end_char] == c.text for c in own), (doc, own)
    vectors = fleet.rows(
        f"SELECT c.document_id, count(*) AS n FROM collection_vectors_{int(version)} v "
        "JOIN chunks c ON c.id = v.chunk_id GROUP BY c.document_id"
    )
    assert (
        sum(v.n for v in vectors)
        == len(chunks)
        == fleet.scalar(f"SELECT count(*) FROM collection_vectors_{int(version)}")
    )


def job_row(fleet: Fleet, job_id: str) -> dict:
    row = fleet.rows("SELECT status, total, done, failed, chunks_done FROM jobs WHERE id = :id", id=uuid.UUID(job_id))[
        0
    ]
    return dict(row._mapping)


def cancel_when_done_reaches(fleet: Fleet, job_id: str, done: int) -> str:
    """Cancel the job once ``done`` of its items are done (or it finished); return the status it must end in."""
    wait_until(
        lambda: job_row(fleet, job_id),
        120,
        f"job {job_id} never reached {done} done",
        until=lambda row: row["done"] >= done or row["status"] != "running",
        interval=0.01,
    )
    with fleet.client(api=done) as client:
        answer = client.post(f"/jobs/{job_id}/cancel")
    if answer.status_code == 409:
        assert "already ended with status succeeded" in answer.json()["detail"], answer.text
        return "succeeded"
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled", answer.text
    return "cancelled"


def test_a_cancel_landing_while_batches_finish_ends_each_job_one_way(
    ok_fleet: Fleet, httpserver_ipv4: HTTPServer
) -> None:
    path = "/fleet/cancelled"
    httpserver_ipv4.expect_request(path, method="POST").respond_with_data("ok")
    url = httpserver_ipv4.url_for(path)
    rng = random.Random(24)
    inputs, documents = 40, 20  # 20 embedding batches, 10 ingest batches
    expected: dict[str, str] = {}
    for r in range(6):
        body = {"input": texts(inputs, seed=3000 + r), "model": MODEL, "webhook_url": url}
        created = post_job(ok_fleet, r, body)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        expected[job_id] = cancel_when_done_reaches(ok_fleet, job_id, rng.randint(1, inputs))
    collections: dict[str, str] = {}
    for r in range(4):
        collection = f"cancelled-{r}"
        create_collection(ok_fleet, collection)
        docs = [{"id": f"c{i}", "text": t} for i, t in enumerate(texts(documents, seed=4000 + r))]
        with ok_fleet.client(api=r) as client:
            created = client.post(
                f"/collections/{collection}/documents",
                params={"webhook_url": url},
                content="".join(json.dumps(d) + "\n" for d in docs).encode(),
                headers={"Content-Type": "application/x-ndjson"},
            )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        collections[job_id] = collection
        expected[job_id] = cancel_when_done_reaches(ok_fleet, job_id, rng.randint(1, documents))

    assert ok_fleet.wait_jobs(list(expected)) == expected
    ok_fleet.wait_quiet()
    assert terminal_events(ok_fleet, list(expected)) == {j: [f"job.{s}"] for j, s in expected.items()}
    events = {e["data"]["id"]: e for e in received(httpserver_ipv4, path)}
    assert sorted(events) == sorted(expected), events
    for job_id, status in expected.items():
        row = job_row(ok_fleet, job_id)
        event = events[job_id]
        assert event["type"] == f"job.{status}" and event["data"]["counts"]["done"] == row["done"], (event, row)
        if status == "succeeded":
            assert row["done"] == row["total"], row
        if job_id in collections:
            assert_ingest_matches_vectors(ok_fleet, collections[job_id], row)
        else:
            counts = embedding_counts(ok_fleet, job_id)
            assert (counts["vectors"], counts["errors"]) == (row["done"], row["failed"]), counts


def assert_ingest_matches_vectors(fleet: Fleet, collection: str, row: dict) -> None:
    """Check an ingest job's counts against what its (only) collection holds: ready documents, chunks, vectors."""
    cid = fleet.scalar("SELECT id FROM collections WHERE name = :n", n=collection)
    version = fleet.scalar("SELECT id FROM collection_versions WHERE collection_id = :c AND status = 'active'", c=cid)
    ready, chunks = fleet.rows(
        "SELECT count(*), coalesce(sum(chunk_count), 0) FROM documents WHERE collection_id = :c AND status = 'ready'",
        c=cid,
    )[0]
    vectors = fleet.scalar(f"SELECT count(*) FROM collection_vectors_{int(version)}")
    assert (row["done"], row["chunks_done"]) == (ready, chunks) and vectors == chunks, (row, ready, chunks, vectors)
