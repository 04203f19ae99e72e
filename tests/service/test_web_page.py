"""The console (services/server/static/) in headless Chromium (Debian's `chromium`) against a real running server (uvicorn on a
socket), a real valkey-server and real trainers (services/train.Trainer with a LocalRoleSet): create a run from a preset
with an override (and see a 422 next to its field), watch its charts fill, live through a Redis outage, change a
parameter and see the trainer acknowledge it, compare two runs, stop with the confirmation step. Driven over the Chrome
DevTools protocol (websockets); skipped without chromium.

The test server has no Ray (jobs=None): a run created through the page stays queued, as on a `tether serve --no-ray`
replica. The test plays the replica with Ray: it takes the run off the queue and starts a trainer for that run id with
the config the service stored (its data paths pointed at the test's prepared tiny task).

Screenshots go under the test's tmp_path; with TETHER_SCREENSHOTS=DIR (e.g. docs/images) also to DIR."""
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

from actors.roleset import LocalRoleSet
from learner.config import config_from_dump
from services.server.api import ServiceSettings, create_app
from services.driver.control import RunControl
from services.server.scheduler import QUEUE
from services.driver.train import Trainer
from tasks.imdb.build import resolve

pytestmark = pytest.mark.slow


def _wait(cond, timeout=60.0, what="condition"):
    return _wait_base(cond, timeout, what, interval=0.2)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-port=0", "--remote-allow-origins=*",
         "--hide-scrollbars", "--font-render-hinting=none"]


class CDP:
    """The few Chrome DevTools protocol calls this test needs; events that arrive meanwhile are kept (JS errors)."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._conn = connect(ws_url, max_size=None)
        self.ws, self.n, self.events = self._conn.__enter__(), 0, []

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]
            if "method" in msg:
                self.events.append(msg)

    def js(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def click(self, selector: str) -> None:
        assert self.js(f"(() => {{ const b = document.querySelector({json.dumps(selector)}); if (!b || b.disabled) return false; "
                       f"b.click(); return true; }})()"), f"{selector} missing or disabled"

    def type(self, selector: str, value: str) -> None:
        assert self.js(f"(() => {{ const i = document.querySelector({json.dumps(selector)}); if (!i) return false; i.value = {json.dumps(value)}; "
                       f"i.dispatchEvent(new Event('input')); i.dispatchEvent(new Event('change')); return true; }})()"), f"{selector} missing"

    def text(self, selector: str) -> str:
        return self.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent")

    def visible(self, selector: str) -> bool:
        return bool(self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); return !!e && !e.hidden && e.offsetParent !== null; }})()"))

    def js_errors(self) -> list[str]:
        """Uncaught exceptions and console.error calls of the page so far."""
        out = []
        for e in self.events:
            if e["method"] == "Runtime.exceptionThrown":
                d = e["params"]["exceptionDetails"]
                out.append((d.get("exception") or {}).get("description") or d.get("text"))
            elif e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in e["params"]["args"]))
        return out

    def screenshot(self, name: str, tmp_path: Path) -> Path:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        (tmp_path / name).write_bytes(png)
        if os.environ.get("TETHER_SCREENSHOTS"):  # for the docs: TETHER_SCREENSHOTS=docs/images pytest tests/service/test_web_page.py
            out = Path(os.environ["TETHER_SCREENSHOTS"])
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(png)
        return tmp_path / name


@pytest.fixture
def server(tmp_path, tether_redis):
    token = "web-token"
    app = create_app(ServiceSettings(data_dir=tmp_path / "svc", redis_url=tether_redis.url, token=token, jobs=None))
    with serve(app) as url:
        yield {"url": url, "token": token, "store": app.state.store, "redis": tether_redis}


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
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False)
        yield cdp
        cdp._conn.__exit__(None, None, None)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _open(browser, server, fragment: str = "", token: str | None = None) -> None:
    """Load the page afresh (about:blank first: a URL that differs only in its fragment would not reload it)."""
    browser.call("Page.navigate", url="about:blank")
    browser.call("Page.navigate", url=f"{server['url']}/#token={token or server['token']}{fragment}")

    def loaded():
        try:
            return browser.js("document.readyState === 'complete' && !!window.tether")
        except RuntimeError:  # the page is still being replaced
            return False

    _wait(loaded, what="page load")


def _local(cfg, base, **train):
    """The run's config as the test's local trainer runs it: the prepared tiny task's data, local roles, one thread."""
    return cfg.model_copy(update={
        "data_dir": base.data_dir, "runs_dir": base.runs_dir,
        "train": cfg.train.model_copy(update={"threads": 1, **train}),
        "runtime": cfg.runtime.model_copy(update={"mode": "local", "engine": "transformers", "checkpoint_every": 0}),
    })


def _trainer(store, run_id: str, cfg, run_dir: Path) -> Trainer:
    trainer = Trainer(cfg, run_dir, progress=False, roles=LocalRoleSet(cfg, resolve(cfg)))
    trainer.commands = RunControl(store, run_id, poll_interval_s=0.2)
    return trainer


def _chart(browser, div: str, trace_key: str) -> dict:
    """x, y of one trace (by its metric name) of a plotly chart, and the axes' titles."""
    return browser.js(f"""(() => {{ const d = document.getElementById({json.dumps(div)}); if (!d || !d.data) return null;
        const t = d.data.find((t) => t.meta === {json.dumps(trace_key)});
        return {{x: t ? [...t.x] : [], y: t ? [...t.y] : [], xtitle: d.layout.xaxis.title.text, ytitle: d.layout.yaxis.title.text,
                 shapes: (d.layout.shapes || []).map((s) => ({{name: s.name, x: s.x0}})),
                 points: d.querySelectorAll('.scatterlayer .point').length}}; }})()""")


def test_console_create_watch_steer_compare_stop(server, browser, tiny_assets, tmp_path):
    store, base = server["store"], tiny_assets[0]
    # a finished run to compare with: a short real run, fixed KL penalty
    b_cfg = _local(base.model_copy(update={"name": "fixed-kl", "kl": base.kl.model_copy(update={"mode": "fixed", "coef": 0.2})}), base,
                   iterations=6, eval_every=2)
    store.create_run("r-base", {"name": "fixed-kl", "config": b_cfg.model_dump(mode="json"), "algorithm": "ppo"})
    _trainer(store, "r-base", b_cfg, tmp_path / "svc" / "runs" / "r-base").run()
    assert store.get_run("r-base")["state"] == "finished"

    _open(browser, server)
    _wait(lambda: browser.js("document.querySelector('#c-preset option[value=\"tiny\"]') !== null"), what="the presets")
    _wait(lambda: browser.js("document.querySelector('#runs tr[data-id=\"r-base\"]') !== null"), what="the finished run listed")
    # create from the preset 'tiny': first with a bad override, shown next to its field by the server's 422
    browser.type("#c-preset", "tiny")
    # the service arms the guard by default, and its published schema says so (the form shows that default, not GuardConfig's)
    assert "true (default)" in browser.js("document.querySelector('[data-field=\"guard.enabled\"]').textContent")
    browser.type("#c-kl-coef", "-1")
    browser.click("#c-submit")
    _wait(lambda: "greater than or equal to 0" in (browser.text('[data-error-for="kl.coef"]') or ""), what="the 422 next to kl.coef")
    assert browser.js("document.getElementById('c-kl-coef').classList.contains('invalid')")
    assert store.summaries() and len(store.summaries()) == 1  # nothing created
    browser.screenshot("console-create-422.png", tmp_path)
    # then with good overrides: a longer run, the KL coefficient, Elastic Reset every 4 iterations
    for sel, v in (("#c-kl-coef", "0.07"), ("#c-name", "web-console"), ("#c-train-iterations", "400"), ("#c-train-eval_every", "3"),
                   ("#c-elastic_reset-enabled", "true"), ("#c-elastic_reset-every", "4")):
        browser.type(sel, v)
    browser.click("#c-submit")
    rid = _wait(lambda: browser.js("window.tether.lastCreated"), what="the run created")
    assert browser.text('[data-error-for="kl.coef"]') == ""
    rec = store.get_run(rid)
    assert rec["config"]["kl"]["coef"] == 0.07 and rec["config"]["elastic_reset"] == {**rec["config"]["elastic_reset"], "enabled": True, "every": 4}
    assert rec["config"]["policy"]["n_layer"] == 2 and rec["config"]["name"] == "web-console"  # the preset's, and the override
    assert browser.js("window.tether.run") == rid
    _wait(lambda: browser.js("document.getElementById('run-state').dataset.kind") == "nometrics", what="'no metrics yet' for the queued run")
    assert "queued" in browser.text("#run-state")
    assert browser.js("document.getElementById('btn-pause').disabled") and not browser.js("document.getElementById('btn-stop').disabled")

    # the replica with Ray would admit it now; here the test does, with the config the service stored
    store.r.zrem(QUEUE, rid)
    store.update_run(rid, state="submitted")
    cfg = _local(config_from_dump(rec["config"]), base)
    assert cfg.kl.coef == 0.07 and cfg.elastic_reset.every == 4
    trainer = _trainer(store, rid, cfg, tmp_path / "svc" / "runs" / rid)
    th = threading.Thread(target=trainer.run, daemon=True)
    th.start()
    try:
        # watch: the charts get points, against the step and against KL, with real axes; Elastic Resets marked
        n0 = _wait(lambda: len((_chart(browser, "chart-reward-step", "reward/gold_mean") or {"x": []})["x"]) >= 2
                   and len(_chart(browser, "chart-reward-step", "reward/gold_mean")["x"]), what="gold points")
        _wait(lambda: len(_chart(browser, "chart-reward-step", "reward/gold_mean")["x"]) > n0, what="live points")
        assert browser.js("document.getElementById('run-state').hidden")
        step = _chart(browser, "chart-reward-step", "reward/gold_mean")
        vs_kl = _chart(browser, "chart-reward-kl", "reward/gold_mean")
        rows = browser.js("window.tether.rows")  # read after the charts: a superset of what they drew
        assert step["xtitle"].startswith("iteration") and vs_kl["xtitle"].startswith("KL from the initial policy") and step["points"] > 4
        at_step = {(r["step"], r["reward/gold_mean"]) for r in rows}
        at_kl = {(r["kl/from_init"], r["reward/gold_mean"]) for r in rows}
        assert len(vs_kl["x"]) >= 2 and set(zip(step["x"], step["y"])) <= at_step and set(zip(vs_kl["x"], vs_kl["y"])) <= at_kl
        for div, key in (("chart-kl-step", "kl/from_init"), ("chart-klcoef-step", "kl/coef"), ("chart-klcoef-kl", "kl/coef"),
                         ("chart-ensemble-step", "ensemble/std"), ("chart-ensemble-kl", "ensemble/std")):
            assert len(_chart(browser, div, key)["x"]) >= 1, div
        _wait(lambda: len(_chart(browser, "chart-guard-step", "guard/distinct2_ratio")["x"]) >= 2, what="the guard's signals")
        resets = _wait(lambda: [s["x"] for s in _chart(browser, "chart-reward-step", "reward/gold_mean")["shapes"] if s["name"] == "reset"],
                       what="an Elastic Reset marked")
        assert resets[0] == next(r["step"] for r in browser.js("window.tether.rows") if r.get("elastic_reset/event") == 1)
        assert any(s["name"] == "reset" for s in _chart(browser, "chart-reward-kl", "reward/gold_mean")["shapes"])
        # samples of an evaluation: ordered by the proxy, any evaluated step
        browser.click('#tabs button[data-tab="samples"]')
        _wait(lambda: browser.js("document.querySelectorAll('#samples tbody tr').length") >= 5, what="samples shown")
        proxy = browser.js("window.tether.samples.samples.map((s) => s.proxy)")
        assert proxy == sorted(proxy, reverse=True)
        browser.type("#samples-order", "proxy_low")
        _wait(lambda: browser.js("window.tether.samples.order") == "proxy_low", what="worst first")
        proxy = browser.js("window.tether.samples.samples.map((s) => s.proxy)")
        assert proxy == sorted(proxy)
        browser.type("#samples-step-sel", "0")
        _wait(lambda: browser.text("#samples-step").startswith("(iteration 0,"), what="the samples of step 0")
        assert not browser.js("document.getElementById('samples-follow').checked")

        # Redis goes away: the page says so and retries; when it is back the stream resumes after the last event id
        n_before = len(browser.js("window.tether.rows"))
        server["redis"].stop()
        _wait(lambda: browser.visible("#offline"), what="the offline banner")
        assert "retrying" in browser.text("#offline")
        time.sleep(1.5)
        server["redis"].start()
        _wait(lambda: not browser.visible("#offline"), 60, what="back online")
        _wait(lambda: len(browser.js("window.tether.rows")) > n_before + 1, what="rows again after the outage")
        log, ids = browser.js("window.tether.streamLog"), browser.js("window.tether.rows.map((r) => r.id)")
        assert len(log) >= 2 and log[0] == "0" and all(a in ids for a in log[1:]), log
        assert len(ids) == len(set(ids))  # nothing twice

        # change a live parameter; the trainer acknowledges it in the command log, the change log records it
        browser.click('#tabs button[data-tab="control"]')
        assert not browser.js("document.getElementById('param-kl_target').disabled")  # kl.mode adaptive (the schema's default)
        assert browser.js("document.getElementById('param-uwo_lambda').disabled") and "uwo" in browser.text("#param-msg-uwo_lambda")
        browser.type("#param-kl_coef", "abc")
        browser.click("#set-kl_coef")
        _wait(lambda: browser.text("#param-msg-kl_coef").startswith("422"), what="a 422 next to kl_coef")
        browser.type("#param-kl_coef", "0.02")
        browser.click("#set-kl_coef")
        _wait(lambda: browser.js("[...document.querySelectorAll('#commands tbody tr')].some((tr) => tr.dataset.state === 'ok' "
                                 "&& tr.textContent.includes('kl_coef'))"), what="kl_coef acknowledged in the command log")
        _wait(lambda: browser.js("document.querySelector('#changes tbody tr[data-param=\"kl_coef\"]') !== null"), what="the change log")
        assert [c["new"] for c in store.changes(rid) if c["param"] == "kl_coef"] == [0.02]
        assert "0.02" in browser.text('#changes tbody tr[data-param="kl_coef"]')
        browser.screenshot("console-control.png", tmp_path)
        # pause: the run reacts (Redis state, trainer blocked), the page shows it and offers resume only
        browser.click("#btn-pause")
        _wait(lambda: store.get_run(rid)["state"] == "paused", what="run paused")
        _wait(lambda: browser.text("#status") == "paused", what="page shows paused")
        _wait(lambda: browser.js("document.getElementById('btn-pause').disabled && !document.getElementById('btn-resume').disabled"),
              what="pause disabled, resume enabled")
        at = trainer.iteration
        time.sleep(1.0)
        assert trainer.iteration == at
        browser.click("#btn-resume")
        _wait(lambda: trainer.iteration > at, what="training resumed")
        browser.click('#tabs button[data-tab="charts"]')
        _wait(lambda: any(s["name"] == "change" for s in _chart(browser, "chart-klcoef-step", "kl/coef")["shapes"]), what="the change marked")
        time.sleep(0.5)
        browser.screenshot("console-run.png", tmp_path)

        # compare the two runs on one gold-vs-KL chart
        for r in (rid, "r-base"):
            browser.click(f'#runs tr[data-id="{r}"] input[type=checkbox]')
        browser.click("#btn-compare")
        _wait(lambda: browser.js("(document.getElementById('chart-compare').data || []).filter((t) => !t.meta.includes(':') && t.x.length >= 2).length") == 2,
              what="both runs on the compare chart")
        assert browser.js("document.querySelectorAll('#compare-table tbody tr').length") == 2
        assert browser.js("document.getElementById('chart-compare').layout.xaxis.title.text").startswith("KL")
        time.sleep(0.5)
        browser.screenshot("console-compare.png", tmp_path)
        browser.click("#compare-close")

        # the report is not there before the run ends
        browser.click('#tabs button[data-tab="files"]')
        browser.click("#btn-report")
        _wait(lambda: "no report yet" in browser.text("#report-msg"), what="409 before the end")
        # stop, with the confirmation step: nothing is sent until it is confirmed
        browser.click("#btn-stop")
        assert browser.visible("#confirm") and "Stop run" in browser.text("#confirm-text")
        time.sleep(0.5)
        assert not any(c["type"] == "stop" for c in store.commands(rid))
        browser.click("#confirm-yes")
        th.join(60)
        assert not th.is_alive() and store.get_run(rid)["state"] == "stopped"
        _wait(lambda: browser.text("#status") == "stopped", what="page shows stopped")
        _wait(lambda: browser.js("['pause', 'resume', 'stop', 'reset'].every((k) => document.getElementById('btn-' + k).disabled) "
                                 "&& document.getElementById('set-kl_coef').disabled"), what="every action disabled")
        _wait(lambda: browser.js("document.querySelectorAll('#checkpoints tbody tr').length") >= 1, what="the stop's checkpoint listed")
        from services.driver.report import write_run_report

        write_run_report(trainer.run_dir, cfg.name)  # what `tether train` does when a run ends
        browser.click("#btn-report")
        _wait(lambda: (browser.js("document.getElementById('report-link').href") or "").startswith("blob:"), what="the report opened")
        assert browser.js_errors() == []
    finally:
        if th.is_alive():
            store.send_command(rid, "stop")
            th.join(60)


def test_console_states_queue_filter_and_failed_run(server, browser):
    """A failed run's reason, the queue positions, paging and filters, a missing run, a bad token: as a person sees them."""
    from services.server.scheduler import Scheduler

    store = server["store"]
    for i in range(14):  # older runs (the list is newest first)
        store.create_run(f"r-old{i:02d}", {"name": f"old-{i}", "config": {}, "state": "finished"})
    reason = "the Ray job tether-r-bad is FAILED. Ray: Job entrypoint command failed with exit code 1\nlast lines of the job's log:\nOSError: no hub"
    store.create_run("r-bad", {"name": "bad", "config": {}, "state": "failed", "job_id": "tether-r-bad", "job_status": "FAILED", "error": reason})
    sched = Scheduler(store, None, None)
    for rid in ("r-q1", "r-q2"):
        store.create_run(rid, {"name": rid, "config": {}, "state": "queued"})
        sched.enqueue(rid)
    _open(browser, server, "&run=r-bad")
    _wait(lambda: browser.js("document.querySelector('tr[data-id=\"r-q2\"]') !== null"), what="runs in the list")
    cells = browser.js("[...document.querySelectorAll('tr[data-id=\"r-q2\"] td')].slice(1, 5).map(td => td.textContent)")
    assert cells == ["r-q2", "r-q2", "queued", "#2"], cells
    _wait(lambda: not browser.js("document.getElementById('error').hidden"), what="the error shown")
    shown = browser.text("#error")
    assert "exit code 1" in shown and "OSError: no hub" in shown and browser.text("#status") == "failed"
    assert browser.js("document.getElementById('run-state').dataset.kind") == "failed"
    assert browser.js("['pause', 'resume', 'stop', 'reset'].every((k) => document.getElementById('btn-' + k).disabled)")
    # paging (15 a page, newest first) and the filters
    assert browser.text("#page-info") == "1–15 of 17"
    browser.click("#page-next")
    _wait(lambda: browser.text("#page-info") == "16–17 of 17", what="the second page")
    assert browser.js("[...document.querySelectorAll('#runs tbody tr')].map((tr) => tr.dataset.id)") == ["r-old01", "r-old00"]
    browser.type("#f-state", "queued")
    _wait(lambda: browser.js("[...document.querySelectorAll('#runs tbody tr')].map((tr) => tr.dataset.id)") == ["r-q2", "r-q1"], what="state filter")
    browser.type("#f-q", "Q1")
    _wait(lambda: browser.js("[...document.querySelectorAll('#runs tbody tr')].map((tr) => tr.dataset.id)") == ["r-q1"], what="text filter")
    # a queued run: no metrics yet, only stop applies (it takes the run off the queue)
    browser.click('#runs tr[data-id="r-q1"]')
    _wait(lambda: browser.js("document.getElementById('run-state').dataset.kind") == "nometrics", what="no metrics yet")
    assert "queued (#1)" in browser.text("#run-state")
    assert browser.js("document.getElementById('btn-pause').disabled && !document.getElementById('btn-stop').disabled")
    browser.click("#btn-stop")
    browser.click("#confirm-yes")
    _wait(lambda: store.get_run("r-q1")["state"] == "cancelled", what="cancelled")
    _wait(lambda: "taken off the queue" in browser.text("#feedback"), what="the feedback")
    time.sleep(2.5)  # a refresh of the list and the run: feedback stays until dismissed
    assert "taken off the queue" in browser.text("#feedback")
    browser.click("#feedback li button.dismiss")
    assert browser.js("document.querySelectorAll('#feedback li').length") == 0
    # a run that does not exist
    _open(browser, server, "&run=r-nope")
    _wait(lambda: browser.js("document.getElementById('run-state').dataset.kind") == "missing", what="the missing run")
    assert "No run with id r-nope (404)" in browser.text("#run-state")
    # a wrong token
    _open(browser, server, token="not-the-token")
    _wait(lambda: browser.visible("#auth"), what="the bad-token state")
    assert "403" in browser.text("#auth") and browser.js("document.querySelectorAll('#runs tbody tr').length") == 0
    browser.type("#token", "web-token")
    browser.js("document.getElementById('token-form').requestSubmit()")
    _wait(lambda: not browser.visible("#auth") and browser.js("document.querySelectorAll('#runs tbody tr').length") > 0, what="a good token")
    assert browser.js("localStorage.getItem('tether-token')") == "web-token" and "not-the-token" not in browser.js("location.hash")
    assert browser.js_errors() == []


def test_console_marks_alarm_and_resets_and_shows_samples_as_text(server, browser, tmp_path):
    """A finished run's logged rows (written with the store's own calls): the guard's alarm and each Elastic Reset marked at
    their step and at their KL; samples are model output: a response that looks like HTML is shown as text and runs nothing."""
    store = server["store"]
    d = tmp_path / "svc" / "runs" / "r-xss" / "main"
    (d / "samples").mkdir(parents=True)
    evil = '<img src=x onerror="window.pwned=1">'
    rows = [{"prompt": "p", "response": evil if i == 0 else f" fine {i}", "proxy": 5.0 - i, "proxy_members": [5.0 - i], "gold": float(i)}
            for i in range(4)]
    (d / "samples" / "step-000002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    guard = {"iteration": 6, "rule": "distinct2_ratio < 0.66 on 1 consecutive evaluation(s), once KL from pi_0 > 1", "action": "alert",
             "pick_iteration": 4}
    store.create_run("r-xss", {"name": "x", "config": {"elastic_reset": {"enabled": True}, "guard": {"signal": "distinct2_ratio", "threshold": 0.66}},
                               "state": "finished", "run_dir": str(d), "guard": guard})
    for step in range(1, 11):
        m = {"reward/proxy_mean": 0.1 * step, "reward/gold_mean": 0.05 * step, "kl/from_init": 0.5 * step, "kl/coef": 0.05,
             "ensemble/std": 0.1, "elastic_reset/event": 1.0 if step in (4, 8) else 0.0}
        if step % 2 == 1:
            m.update({"eval/gold_mean": 0.05 * step, "guard/distinct2_ratio": 1.0 - 0.07 * step, "guard/alarm": float(step >= 7)})
        if step == 7:
            m["guard/alarm_event"] = 1.0
        store.add_metrics("r-xss", f"{step}-1", step, m)
    _open(browser, server, "&run=r-xss")
    _wait(lambda: len((_chart(browser, "chart-reward-step", "reward/gold_mean") or {"x": []})["x"]) == 10, what="the rows drawn")
    for div, key in (("chart-reward-step", "reward/gold_mean"), ("chart-guard-step", "guard/distinct2_ratio")):
        marks = sorted((s["name"], s["x"]) for s in _chart(browser, div, key)["shapes"] if s["name"] in ("reset", "alarm"))
        assert marks == [("alarm", 7), ("reset", 4), ("reset", 8)], (div, marks)
    at_kl = sorted((s["name"], s["x"]) for s in _chart(browser, "chart-reward-kl", "reward/gold_mean")["shapes"] if s["name"] != "threshold")
    assert at_kl == [("alarm", 3.5), ("reset", 2.0), ("reset", 4.0)], at_kl
    assert any(s["name"] == "threshold" for s in _chart(browser, "chart-guard-step", "guard/distinct2_ratio")["shapes"])
    assert "alarm at iteration 6" in browser.text("#guard") and "best judged: iteration 4" in browser.text("#guard")
    assert browser.js("['pause', 'resume', 'stop', 'reset'].every((k) => document.getElementById('btn-' + k).disabled)")
    browser.click('#tabs button[data-tab="samples"]')
    _wait(lambda: browser.js("document.querySelectorAll('#samples tbody tr').length") == 4, what="samples shown")
    first = browser.text("#samples tbody tr td.text")
    assert evil in first and browser.js("document.querySelector('#samples img') === null")
    time.sleep(0.5)
    assert browser.js("window.pwned === undefined")
    assert browser.text("#samples-step") == "(iteration 2, 4 samples)"
    assert browser.js_errors() == []


def test_console_stream_reader_against_a_reference(server, browser):
    """The page's server-sent-event reader (fetch + a stream reader: EventSource cannot send the token) on a stream cut
    into 3-byte chunks (lines, CRLF pairs and a UTF-8 character split), and its ordering of stream ids, against the
    events and order written out by hand."""
    _open(browser, server)
    got = browser.js("""(async () => {
        const m = await import('/static/js/api.js');
        const text = 'id: 1-1\\nevent: metrics\\ndata: {"a": "\u03c0"}\\n\\n: keep-alive\\n\\nevent: state\\r\\ndata: {"state":"running"}\\r\\n\\r\\n'
                   + 'id: 2-1\\nevent: metrics\\ndata: {"b":\\ndata: 2}\\n\\nevent: end\\ndata: {}\\n\\ndata: no blank line after me';
        const bytes = new TextEncoder().encode(text);
        const body = new ReadableStream({ start(c) { for (let i = 0; i < bytes.length; i += 3) c.enqueue(bytes.slice(i, i + 3)); c.close(); } });
        const events = [];
        for await (const ev of m.sseEvents(new Response(body))) events.push(ev);
        const ids = ['10-1', '9-5', '5', '5-0', '18446744073709551615-1', '18446744073709551614-9'];
        return { events, order: [m.cmpId('10-1', '9-5'), m.cmpId('5', '5-0'), m.cmpId(ids[5], ids[4]), m.cmpId('2-1', '2-10')] };
    })()""")
    assert got["events"] == [
        {"event": "metrics", "data": '{"a": "\u03c0"}', "id": "1-1"},
        {"event": "comment"},
        {"event": "state", "data": '{"state":"running"}', "id": None},
        {"event": "metrics", "data": '{"b":\n2}', "id": "2-1"},
        {"event": "end", "data": "{}", "id": None},
    ]  # the unterminated last event is not delivered (the SSE rule: an event ends at a blank line)
    assert got["order"] == [1, 0, -1, -1]
    assert browser.js_errors() == []
