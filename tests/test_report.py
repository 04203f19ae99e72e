"""Reports: the run page has its three plots and the config; a comparison page has the frontier chart."""
import json

from services.report import write_comparison_report, write_run_report
from services.runlog import RunLog, read_metrics


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
