"""The console driver shared by the page tests (tests/service/test_web_page*.py): headless Chromium over the Chrome DevTools
protocol, the real server and valkey fixtures, and helpers that open the page, read a chart and run a local trainer."""
import base64
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from waiting import serve, wait_for as _wait_base

from actors.roleset import LocalRoleSet
from services.server.api import ServiceSettings, create_app
from services.driver.control import RunControl
from services.driver.train import Trainer
from tasks.imdb.build import resolve



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
        if os.environ.get("TETHER_SCREENSHOTS"):  # for the docs: TETHER_SCREENSHOTS=docs/images pytest tests/service/test_web_page*.py
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
