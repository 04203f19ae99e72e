"""The web page in headless Chromium (Debian's `chromium`) against a real running server (uvicorn on a
socket), a real valkey-server and a running trainer: load the page, see a live chart, press a button,
observe the run react. Driven over the Chrome DevTools protocol (websockets); skipped without chromium."""
import base64
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from waiting import serve, wait_for as _wait_base

from tasks.imdb.build import resolve
from services.api import ServiceSettings, create_app
from services.control import RunControl
from actors.roleset import LocalRoleSet
from services.train import Trainer

pytestmark = pytest.mark.slow


def _wait(cond, timeout=60.0, what="condition"):
    return _wait_base(cond, timeout, what, interval=0.2)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-port=0", "--remote-allow-origins=*"]




class CDP:
    """The few Chrome DevTools protocol calls this test needs."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._conn = connect(ws_url, max_size=None)
        self.ws, self.n = self._conn.__enter__(), 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    def js(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")


@pytest.fixture
def server(tmp_path, tether_redis):
    token = "web-token"
    app = create_app(ServiceSettings(data_dir=tmp_path / "svc", redis_url=tether_redis.url, token=token, jobs=None))
    with serve(app) as url:
        yield {"url": url, "token": token, "store": app.state.store}


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _wait(lambda: (profile / "DevToolsActivePort").exists() and (profile / "DevToolsActivePort").read_text().split()[0],
                     what="chromium's DevTools port")
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
        page = next(t for t in targets if t["type"] == "page")
        cdp = CDP(page["webSocketDebuggerUrl"])
        yield cdp
        cdp._conn.__exit__(None, None, None)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_shows_live_chart_and_buttons_steer_the_run(server, browser, tiny_assets, tmp_path):
    store = server["store"]
    base = tiny_assets[0]
    cfg = base.model_copy(update={
        "train": base.train.model_copy(update={"iterations": 500, "eval_every": 5}),
        "runtime": base.runtime.model_copy(update={"mode": "local", "engine": "transformers", "checkpoint_every": 0}),
    })
    store.create_run("r-web", {"name": cfg.name, "config": cfg.model_dump(mode="json")})
    trainer = Trainer(cfg, tmp_path / "svc" / "runs" / "r-web", progress=False, roles=LocalRoleSet(cfg, resolve(cfg)))
    trainer.commands = RunControl(store, "r-web", poll_interval_s=0.2)
    th = threading.Thread(target=trainer.run, daemon=True)
    th.start()
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"{server['url']}/#token={server['token']}&run=r-web")
        _wait(lambda: browser.js("document.readyState") == "complete", what="page load")
        # the runs list shows the run, the chart fills with live points
        _wait(lambda: browser.js("document.querySelector('tr[data-id=\"r-web\"]') !== null"), what="run in the list")
        n0 = _wait(lambda: (browser.js("window.tether.rows.length") or 0) >= 2 and browser.js("window.tether.rows.length"), what="points")
        _wait(lambda: browser.js("window.tether.rows.length") > n0, what="live points")
        gold_pixels = browser.js("""(() => { const c = document.getElementById('chart-step'), d = c.getContext('2d')
            .getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] > 150 && d[i+1] > 90 && d[i+1] < 160 && d[i+2] < 60 && d[i+3] > 200) n++;
            return n; })()""")
        assert gold_pixels > 20  # gold-reward points drawn on the canvas
        # the latest evaluation's samples: best / worst by proxy and the largest disagreements, as text
        _wait(lambda: browser.js("document.querySelectorAll('#samples-best tbody tr').length") == 3, what="samples shown")
        best = browser.js("[...document.querySelectorAll('#samples-best tbody tr')].map(tr => +tr.children[1].textContent.split(' ')[1])")
        worst = browser.js("[...document.querySelectorAll('#samples-worst tbody tr')].map(tr => +tr.children[1].textContent.split(' ')[1])")
        assert best == sorted(best, reverse=True) and min(best) >= max(worst), (best, worst)
        assert browser.js("document.querySelectorAll('#samples-disagree tbody tr').length") == 3
        step = browser.js("window.tether.samples.step")
        assert browser.js("document.getElementById('samples-step').textContent").startswith(f"(iteration {step},")
        if os.environ.get("TETHER_SCREENSHOT"):  # for a person to look at: TETHER_SCREENSHOT=page.png pytest ...
            browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
            time.sleep(2.5)  # one refresh of the runs list (every 2 s)
            shot = browser.call("Page.captureScreenshot", format="png")["data"]
            Path(os.environ["TETHER_SCREENSHOT"]).write_bytes(base64.b64decode(shot))
        # press pause: the run reacts (Redis state, trainer blocked) and the page shows it
        browser.js("document.getElementById('btn-pause').click()")
        _wait(lambda: store.get_run("r-web")["state"] == "paused", what="run paused")
        _wait(lambda: browser.js("document.getElementById('status').textContent") == "paused", what="page shows paused")
        at = trainer.iteration
        time.sleep(1.0)
        assert trainer.iteration == at
        browser.js("document.getElementById('btn-resume').click()")
        _wait(lambda: trainer.iteration > at, what="training resumed")
        browser.js("document.getElementById('btn-stop').click()")
        th.join(60)
        assert not th.is_alive() and store.get_run("r-web")["state"] == "stopped"
        _wait(lambda: browser.js("document.getElementById('status').textContent") == "stopped", what="page shows stopped")
    finally:
        if th.is_alive():
            store.send_command("r-web", "stop")
            th.join(60)


def test_page_shows_the_queue_and_why_a_run_failed(server, browser):
    """A failed run's reason (Ray's message and the job log's tail) and the queue positions, as a person sees them."""
    from services.scheduler import Scheduler

    store = server["store"]
    reason = "the Ray job tether-r-bad is FAILED. Ray: Job entrypoint command failed with exit code 1\nlast lines of the job's log:\nOSError: no hub"
    store.create_run("r-bad", {"name": "bad", "config": {}, "state": "failed", "job_id": "tether-r-bad", "job_status": "FAILED", "error": reason})
    sched = Scheduler(store, None, None)
    for rid in ("r-q1", "r-q2"):
        store.create_run(rid, {"name": rid, "config": {}, "state": "queued"})
        sched.enqueue(rid)
    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{server['url']}/#token={server['token']}&run=r-bad")
    _wait(lambda: browser.js("document.querySelector('tr[data-id=\"r-q2\"]') !== null"), what="runs in the list")
    cells = browser.js("[...document.querySelectorAll('tr[data-id=\"r-q2\"] td')].map(td => td.textContent)")
    assert cells[:4] == ["r-q2", "r-q2", "queued", "#2"], cells
    _wait(lambda: not browser.js("document.getElementById('error').hidden"), what="the error shown")
    shown = browser.js("document.getElementById('error').textContent")
    assert "exit code 1" in shown and "OSError: no hub" in shown and browser.js("document.getElementById('status').textContent") == "failed"


def test_page_shows_samples_as_text_never_as_html(server, browser, tmp_path):
    """Samples are model output: a response that looks like HTML is shown as text and runs nothing."""
    store = server["store"]
    d = tmp_path / "svc" / "runs" / "r-xss" / "main"
    (d / "samples").mkdir(parents=True)
    evil = '<img src=x onerror="window.pwned=1">'
    rows = [{"prompt": "p", "response": evil if i == 0 else f" fine {i}", "proxy": 5.0 - i, "proxy_members": [5.0 - i], "gold": float(i)}
            for i in range(4)]
    (d / "samples" / "step-000002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store.create_run("r-xss", {"name": "x", "config": {}, "state": "finished", "run_dir": str(d)})
    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{server['url']}/#token={server['token']}&run=r-xss")
    _wait(lambda: browser.js("document.querySelectorAll('#samples-best tbody tr').length") == 3, what="samples shown")
    first = browser.js("document.querySelector('#samples-best tbody tr td').textContent")
    assert evil in first and browser.js("document.querySelector('#samples img') === null")
    time.sleep(0.5)
    assert browser.js("window.pwned === undefined")
    assert browser.js("document.getElementById('samples-step').textContent") == "(iteration 2, 4 samples)"
