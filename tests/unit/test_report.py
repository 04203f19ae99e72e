"""Reports: the run page has its three plots and the config; a comparison page has the frontier chart."""
import json

from services.driver.report import write_comparison_report, write_run_report
from services.state.runlog import RunLog, read_metrics


def _fake_run(d, slope, reset_at=()):
    log = RunLog(d, tensorboard=False)
    for step in range(1, 9):
        m = {"reward/proxy_mean": 0.1 * step, "reward/gold_mean": slope * step, "kl/from_init": 0.5 * step, "kl/to_ref": 0.4 * step,
             "drift/ppl_under_init": 100 + step, "elastic_reset/event": 1.0 if step in reset_at else 0.0}
        if step % 2 == 0:
            m.update({"eval/gold_mean": slope * step, "eval/proxy_mean": 0.1 * step, "eval/kl_from_init_k3": 0.5 * step, "eval/proxy_gold_gap": (0.1 - slope) * step})
        log.log(step, m)
    log.close()
    (d / "summary.json").write_text(json.dumps({"eval/gold_mean": slope * 8, "eval/proxy_mean": 0.8, "eval/kl_from_init_k3": 4.0}))
    (d / "config.json").write_text(json.dumps({"name": d.name}))


def test_run_and_comparison_reports(tmp_path):
    a, b = tmp_path / "ppo_kl", tmp_path / "elastic_reset"
    _fake_run(a, 0.05)
    _fake_run(b, 0.08, reset_at=(4, 8))
    page = write_run_report(b, "elastic_reset").read_text()
    for png in ("reward_vs_kl.png", "reward_vs_step.png", "drift_vs_step.png"):
        assert (b / png).stat().st_size > 5000 and png in page
    assert "data:image/png;base64," in page and "0.640" in page  # final gold in the table
    cmp = write_comparison_report({"ppo_kl": a, "elastic_reset": b}, tmp_path, "cmp").read_text()
    assert (tmp_path / "frontier_gold_vs_kl.png").stat().st_size > 5000 and (tmp_path / "proxy_gold_gap.png").exists()
    assert "ppo_kl" in cmp and "elastic_reset/report.html" in cmp


def test_metrics_log_survives_a_torn_line(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    log.log(1, {"a": 1.0, "b": float("nan")})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "a": ')  # a crash mid-write
    rows = read_metrics(tmp_path)
    assert rows == [{"step": 1, "time": rows[0]["time"], "a": 1.0, "b": None}]


def test_run_report_shows_samples_at_start_gold_peak_and_end_escaped(tmp_path):
    import json

    from services.driver.report import samples_section, write_run_report

    d = tmp_path / "run"
    (d / "samples").mkdir(parents=True)
    gold_by_step = {0: 0.0, 2: 2.0, 4: -1.0}
    for st, g in gold_by_step.items():
        rows = [{"prompt": "P ", "response": f"<b>resp {st}-{i}</b>", "proxy": float(st + i), "proxy_members": [0.0], "gold": g + (i == 0) * 0.1}
                for i in range(5)]
        (d / "samples" / f"step-{st:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cut')
    html_ = samples_section(d)
    assert "start: iteration 0" in html_ and "gold peak: iteration 2" in html_ and "end: iteration 4" in html_
    assert "&lt;b&gt;resp 2-4&lt;/b&gt;" in html_ and "<b>resp 2" not in html_  # model output is escaped, never markup
    assert html_.count("<tr><td>") == 12  # 4 samples per evaluation: the 2 best by proxy and 2 the gold rates far lower
    assert samples_section(tmp_path / "none") == ""
    (d / "metrics.jsonl").write_text("")
    assert "<h2>samples</h2>" in write_run_report(d, "r").read_text()
