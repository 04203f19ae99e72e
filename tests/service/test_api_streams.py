"""SSE under load, against a real uvicorn server on a socket and a real valkey-server: 50 clients that
start from "now" (after=$) each receive every row published after they connected. (Before: one worker
thread per stream and "$" re-sent to XREAD on every loop; with 50 clients 26 received none of 5 rows.)"""
import asyncio
import json

import httpx
import pytest
from waiting import serve

from services.server.api import ServiceSettings, create_app

TOKEN = "stream-token"
N_CLIENTS, N_ROWS = 50, 5


@pytest.fixture
def server(tmp_path, tether_redis):
    app = create_app(ServiceSettings(data_dir=tmp_path / "svc", redis_url=tether_redis.url, token=TOKEN, jobs=None))
    with serve(app) as url:
        yield url, app.state.store


async def _client(url: str, connected: asyncio.Event, counter: list, rows: list, *, after: str = "$", last_event_id: str | None = None):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    async with httpx.AsyncClient(timeout=60) as c:
        async with c.stream("GET", f"{url}/runs/r-sse/metrics/stream", params={"after": after, "max_events": N_ROWS}, headers=headers) as r:
            assert r.status_code == 200
            counter.append(1)
            if len(counter) == N_CLIENTS:
                connected.set()
            event = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "metrics":
                    rows.append(json.loads(line[6:])["step"])


def test_fifty_clients_from_now_each_get_every_new_row(server):
    url, store = server
    store.create_run("r-sse", {"name": "x", "config": {}, "state": "running"})
    store.add_metrics("r-sse", "1-1", 1, {"reward/gold_mean": 0.0})  # history that after=$ must not send

    async def main():
        connected, counter = asyncio.Event(), []
        rows = [[] for _ in range(N_CLIENTS)]
        tasks = [asyncio.create_task(_client(url, connected, counter, rows[i])) for i in range(N_CLIENTS)]
        await asyncio.wait_for(connected.wait(), 60)
        await asyncio.sleep(1.5)  # every stream has resolved "$" and is parked in XREAD
        for step in range(2, 2 + N_ROWS):  # published quickly, between and during the clients' reads
            await asyncio.to_thread(store.add_metrics, "r-sse", f"{step}-1", step, {"reward/gold_mean": step / 10})
            await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return rows

    rows = asyncio.run(main())
    assert all(r == list(range(2, 2 + N_ROWS)) for r in rows), [len(r) for r in rows]


def test_resume_with_last_event_id_and_end_of_a_finished_run(server):
    url, store = server
    store.create_run("r-sse", {"name": "x", "config": {}, "state": "running"})
    for step in range(1, 8):
        store.add_metrics("r-sse", f"{step}-1", step, {"reward/gold_mean": 0.1})
    got: list = []
    asyncio.run(_client(url, asyncio.Event(), [], got, after="0", last_event_id="2-1"))
    assert got == [3, 4, 5, 6, 7]  # the header wins over after=0
    store.update_run("r-sse", state="finished")
    body = httpx.get(f"{url}/runs/r-sse/metrics/stream", params={"after": "$"}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text
    assert body.startswith('event: state\ndata: {"state": "finished"}') and "event: metrics" not in body
    assert "event: end" in body and '"state": "finished"' in body
