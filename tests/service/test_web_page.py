"""The console (services/server/static/) in headless Chromium (Debian's `chromium`) against a real running server (uvicorn on a
socket), a real valkey-server and real trainers (services/train.Trainer with a LocalRoleSet): create a run from a preset
with an override (and see a 422 next to its field), watch its charts fill, live through a Redis outage, change a
parameter and see the trainer acknowledge it, compare two runs, stop with the confirmation step. Driven over the Chrome
DevTools protocol (websockets); skipped without chromium.

The test server has no Ray (jobs=None): a run created through the page stays queued, as on a `tether serve --no-ray`
replica. The test plays the replica with Ray: it takes the run off the queue and starts a trainer for that run id with
the config the service stored (its data paths pointed at the test's prepared tiny task).

Screenshots go under the test's tmp_path; with TETHER_SCREENSHOTS=DIR (e.g. docs/images) also to DIR."""
import threading
import time

import pytest

from learner.config import config_from_dump
from services.server.scheduler import QUEUE

from web_page_helpers import _chart, _local, _open, _trainer, _wait, browser, server  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


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
