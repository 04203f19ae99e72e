"""The console in headless Chromium against a real server and valkey (tests/web_page_helpers.py): run states, the queue,
filters and a failed run; alarm marks, resets and samples as text; the stream reader against a reference."""
import json
import time

import pytest


from web_page_helpers import _chart, _open, _wait, browser, server  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


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
