"""learner.guard (gold-free signals, the alarm rule) and services.experiments.guard_grade (calibration on some seeds, grading on others)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from learner.guard import Guard, GuardRule, distinct_n, first_alarm, rank_agreement, repetition


def test_text_signals_by_hand():
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert repetition(["a b c a b c"]) == pytest.approx(1 / 4)  # 3-grams abc bca cab abc: one repeat of 4
    assert repetition(["a b"]) == 0.0 and distinct_n([""], 2) == 0.0


def test_rank_agreement_is_spearman():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    m = rng.normal(size=(50, 3))
    m[:, 1] = m[:, 0] + 0.3 * rng.normal(size=50)
    m[5:10, 2] = 1.0  # ties
    want = np.mean([spearmanr(m[:, i], m[:, j])[0] for i, j in ((0, 1), (0, 2), (1, 2))])
    assert rank_agreement(m) == pytest.approx(want)
    assert rank_agreement(np.column_stack([m[:, 0], m[:, 0]])) == pytest.approx(1.0)
    assert math.isnan(rank_agreement(m[:, :1]))


def _feed(g: Guard, n_evals: int, *, collapse_at: int, seed: int = 0):
    """Evaluations whose texts lose diversity after ``collapse_at`` while the proxy keeps rising and members spread."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(400)]
    out = []
    for t in range(n_evals):
        narrow = t >= collapse_at
        texts = [" ".join(rng.choice(vocab[:6] if narrow else vocab, 20)) for _ in range(32)]
        base = 0.3 * t + rng.normal(0, 1, 32)
        members = base[:, None] + rng.normal(0, 0.2 + (0.5 if narrow else 0.0), (32, 4))
        out.append(g.update(2 * t, members, texts, kl=2.0 * t, ppl=60.0 - (20 if narrow else 0)))
    return out


def test_guard_signals_move_where_text_degenerates_and_alarm_fires_once():
    g = Guard(GuardRule("distinct2_ratio", 0.6, patience=2, min_kl=1.0))
    rows = _feed(g, 10, collapse_at=6)
    assert rows[0]["distinct2_ratio"] == pytest.approx(1.0) and rows[0]["ppl_ratio"] == pytest.approx(1.0)
    assert all(r["distinct2_ratio"] > 0.9 for r in rows[1:6]) and all(r["distinct2_ratio"] < 0.6 for r in rows[6:])
    assert rows[7]["disagreement"] > 1.5 * rows[3]["disagreement"]
    assert rows[7]["ppl_ratio"] == pytest.approx(40 / 60)
    assert [r["alarm"] for r in rows] == [False] * 7 + [True] * 3  # patience 2: warnings at 6 and 7, alarm at 7
    assert g.alarm_step == 14
    m = g.metrics()
    assert m["guard/alarm"] == 1.0 and "guard/distinct2_ratio" in m and all(k.startswith("guard/") for k in m)


def test_first_alarm_respects_min_kl_and_resets_streaks():
    rows = [{"kl": k, "ppl_ratio": v} for k, v in [(0.0, 0.1), (0.5, 0.1), (2.0, 0.5), (3.0, 0.9), (4.0, 0.5), (5.0, 0.5)]]
    assert first_alarm(rows, GuardRule("ppl_ratio", 0.6, patience=1, min_kl=1.0)) == 2
    assert first_alarm(rows, GuardRule("ppl_ratio", 0.6, patience=2, min_kl=1.0)) == 5
    assert first_alarm(rows, GuardRule("ppl_ratio", 0.6, patience=3, min_kl=1.0)) is None
    assert first_alarm([{"kl": 5.0, "ppl_ratio": math.nan}], GuardRule("ppl_ratio", 0.6)) is None  # unmeasured never warns


def test_guard_rejects_bad_input():
    with pytest.raises(ValueError, match="not one of"):
        GuardRule("gold", 0.5)
    with pytest.raises(ValueError, match="patience"):
        GuardRule("ppl_ratio", 0.5, patience=0)
    g = Guard()
    with pytest.raises(ValueError, match="finite"):
        g.update(0, np.array([[np.nan]]), ["x"], 0.0)
    with pytest.raises(ValueError, match=r"\(L, k\)"):
        g.update(0, np.zeros((2, 3)), ["x"], 0.0)


def _synthetic_run(seed: int, *, overopt: bool):
    g = Guard()
    rows = _feed(g, 12, collapse_at=6 if overopt else 99, seed=seed)
    gold = [0.3 * t if (t < 6 or not overopt) else 1.8 - 1.0 * (t - 5) for t in range(12)]  # peak at t 5 when it over-optimises
    return {"stage": "s", "method": "m" if overopt else "safe", "seed": seed, "signals": rows, "gold": gold, "steps": [2 * t for t in range(12)]}


def test_calibration_on_some_seeds_and_grading_on_the_others():
    from services.experiments.guard_grade import grade, guard_markdown

    runs = [_synthetic_run(s, overopt=True) for s in range(3)] + [_synthetic_run(10 + s, overopt=False) for s in range(3)]
    for r in runs[3:]:
        r["seed"] -= 10
    g = grade(runs, calib_seeds=(0, 1))
    assert g["n_calib"] == 4 and g["n_test"] == 2
    d2 = g["signals"]["distinct2_ratio"]
    # the collapse is visible in distinct-2: on the held-out seed the guard stops right after the peak, and leaves the safe run alone
    held = {x["method"]: x for x in d2["runs"]}
    assert held["m"]["alarm"] == 12 and held["m"]["pick_step"] == 10 and held["m"]["gold_pick"] == pytest.approx(1.5)
    assert held["safe"]["alarm"] is None and held["safe"]["gold_pick"] == pytest.approx(held["safe"]["gold_final"])
    assert d2["gold_pick"] > d2["gold_final"]
    assert "| distinct2_ratio" in guard_markdown(g)
    assert "error" in grade(runs, calib_seeds=(0, 1, 2))


def test_guard_plot_of_the_grading(tmp_path):
    from services.experiments.guard_grade import grade, guard_plots

    runs = [_synthetic_run(s, overopt=True) for s in range(3)]
    g = grade(runs, calib_seeds=(0, 1))
    (png,) = guard_plots(g, runs, tmp_path)
    assert png.name == "guard.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert guard_plots({"error": "no runs"}, [], tmp_path) == []


def test_replay_reads_a_run_folder(tmp_path):
    from services.experiments.guard_grade import replay

    d = tmp_path / "run"
    (d / "samples").mkdir(parents=True)
    rows = []
    for t in range(4):
        lines = [{"prompt": f"p{i}", "response": f"a{i} b{t} c d", "proxy": 0.0, "proxy_members": [t + 0.1 * i, t - 0.1 * i], "gold": t - 1.0}
                 for i in range(6)]
        (d / "samples" / f"step-{2 * t:06d}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        rows.append({"step": 2 * t + 1, "eval/gold_mean": t - 1.0, "eval/kl_from_init_k3": 1.5 * t, "eval/ppl_under_init": 50.0})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = replay(d)
    assert out["gold"] == [-1.0, 0.0, 1.0, 2.0] and out["steps"] == [0, 2, 4, 6]
    assert out["signals"][3]["gain_per_kl"] == pytest.approx(1.0 / 1.5)
    (d / "samples" / "step-000006.jsonl").unlink()
    with pytest.raises(ValueError, match="3 samples files but 4"):
        replay(d)


def test_restore_keeps_the_reference_and_the_evaluations_before_the_resume_point():
    """A resumed run (killed after a checkpoint) continues its guard from guard.json: same reference, the evaluations
    that will be redone dropped, an alarm kept only if it came before."""
    import json

    g = Guard(GuardRule("distinct2_ratio", 0.6, patience=1, min_kl=1.0))
    _feed(g, 10, collapse_at=6)  # alarm at evaluation 6 (iteration 12)
    assert g.alarm_step == 12
    saved = json.loads(json.dumps(g.as_dict()))  # through JSON, as guard.json (NaN stored as null)
    early = Guard(GuardRule("distinct2_ratio", 0.6, patience=1, min_kl=1.0))
    early.restore(saved, before_step=8)
    assert [h["step"] for h in early.history] == [0, 2, 4, 6] and early.alarm_step is None
    assert np.allclose(early.ref.member_mean, g.ref.member_mean) and early.ref.distinct2 == g.ref.distinct2
    assert math.isnan(early.history[0]["gain_per_kl"])  # null back to NaN
    late = Guard(GuardRule("distinct2_ratio", 0.6, patience=1, min_kl=1.0))
    late.restore(saved, before_step=16)
    assert late.alarm_step == 12 and late.history[-1]["alarm"] and not late.history[5]["alarm"]
