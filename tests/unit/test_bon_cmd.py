"""`tether bon` on the tiny task: real roles (local mode, transformers engine), real noisy and clean proxies, real gold.

Invariants checked against numbers recomputed by hand from the saved samples: KL_bon(n) = log n - (n-1)/n;
BoN(1) = the plain mean over all samples; BoN(N) = the mean over prompts of the single best sample; the
proxy-aggregate curve never decreases in n (E[max of n] grows with n).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from services.cli import main

N_MAX, PROMPTS, LAM = 8, 4, 0.5
CURVES = {f"{e}/{a}" for e in ("noisy", "clean") for a in ("mean", "wco", "uwo", "single")}


def _sets(cfg, data_dir=None) -> list[str]:
    over = [f"data_dir={data_dir or cfg.data_dir}", f"runs_dir={cfg.runs_dir}", "train.threads=1", "runtime.mode=local", "runtime.engine=transformers"]
    return [x for s in over for x in ("--set", s)]


def _exit_message(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert isinstance(e.value.code, str), e.value.code  # a message, not a bare status
    assert e.value.code.startswith("tether: "), e.value.code
    return e.value.code


@pytest.fixture(scope="module")
def clean_cfg(tiny_assets):
    """The tiny config with proxies trained on unflipped labels (only the proxy stage is rebuilt)."""
    from tasks.imdb.build import prepare
    from learner.config import load_config

    cfg = tiny_assets[0]
    clean = load_config("tiny", [f"data_dir={cfg.data_dir}", f"runs_dir={cfg.runs_dir}", "train.threads=1", "proxy.label_noise=0"])
    assert cfg.proxy.label_noise > 0 and clean.proxy.label_noise == 0
    prepare(clean)
    return clean


def _agg(members: np.ndarray, method: str) -> np.ndarray:
    """(P, N, k) -> (P, N), by hand (Coste et al.): mean; min; mean - lambda * population variance; the first member alone."""
    if method == "single":
        return members[..., 0]
    if method == "mean":
        return members.mean(-1)
    if method == "wco":
        return members.min(-1)
    return members.mean(-1) - LAM * members.var(-1)


def test_bon_tiny_curves_files_and_invariants(tiny_assets, clean_cfg, tmp_path, capsys):
    from tasks.imdb.build import resolve
    from learner.models.gold import load_gold
    from learner.models.reward import ProxyEnsemble

    cfg, _, paths = tiny_assets
    out = tmp_path / "bon"
    assert main(["bon", "tiny", *_sets(cfg), "--n-max", str(N_MAX), "--prompts", str(PROMPTS), "--uwo-lambda", str(LAM), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert all(c in printed for c in CURVES)

    res = json.loads((out / "bon.json").read_text())
    assert set(res["curves"]) == CURVES
    assert res["settings"]["ns"] == list(range(1, N_MAX + 1))
    assert res["settings"]["label_noise"] == {"noisy": cfg.proxy.label_noise, "clean": 0.0}
    assert res["settings"]["proxies"]["clean"] == [str(p) for p in resolve(clean_cfg).proxies]
    samples = np.load(out / "samples.npz")
    gold = samples["gold"]  # (P, N)
    members = {"noisy": samples["proxy_noisy"], "clean": samples["proxy_clean"]}  # (P, N, k)
    assert gold.shape == (PROMPTS, N_MAX) and members["noisy"].shape == (PROMPTS, N_MAX, cfg.proxy.n_members)
    assert members["clean"].shape == members["noisy"].shape and not np.allclose(members["clean"], members["noisy"])

    # the saved scores belong to the saved texts: rescore them with the real gold and the real noisy ensemble
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows]
    assert len(texts) == PROMPTS * N_MAX and [r["prompt"] for r in rows] == [i // N_MAX for i in range(PROMPTS * N_MAX)]
    np.testing.assert_allclose(np.asarray(load_gold(paths.gold).score(texts), dtype=np.float64).reshape(PROMPTS, N_MAX), gold, rtol=1e-6, atol=1e-6)
    ens = ProxyEnsemble(paths.proxies, aggregation="mean", uwo_lambda=LAM, max_len=cfg.proxy.max_len)
    np.testing.assert_allclose(ens.score_texts(texts).double().numpy().reshape(members["noisy"].shape), members["noisy"], atol=1e-4)
    assert abs(res["samples"]["bon/kl_from_init_k3"]) < 0.05  # pi_0's own samples
    assert res["samples"]["gold/mean"] == pytest.approx(gold.mean())

    n = np.arange(1, N_MAX + 1)
    for name, c in res["curves"].items():
        ens_name, method = name.split("/")
        agg = _agg(members[ens_name], method)  # (P, N)
        assert c["n"] == n.tolist()
        np.testing.assert_allclose(c["kl"], np.log(n) - (n - 1) / n, atol=1e-12)
        assert c["kl"][0] == 0.0
        assert np.all(np.diff(c["proxy"]) >= -1e-9), (name, c["proxy"])  # E[max of n] is non-decreasing
        # n = 1: a uniformly random sample, i.e. the plain means over all samples
        assert c["gold"][0] == pytest.approx(gold.mean(), abs=1e-9)
        assert c["proxy"][0] == pytest.approx(agg.mean(), abs=1e-5)
        used = members[ens_name][..., :1] if method == "single" else members[ens_name]
        assert c["proxy_member_mean"][0] == pytest.approx(used.mean(), abs=1e-5)
        # n = N: the best of all N samples of each prompt
        assert c["proxy"][-1] == pytest.approx(agg.max(1).mean(), abs=1e-5)
        best = agg.argmax(1)
        if all(np.sum(np.isclose(a, a.max(), rtol=0, atol=1e-6)) == 1 for a in agg):  # no tie at the top
            assert c["gold"][-1] == pytest.approx(gold[np.arange(PROMPTS), best].mean(), abs=1e-9)
        if method in ("mean", "single"):
            np.testing.assert_allclose(c["proxy_member_mean"], c["proxy"], atol=1e-6)
        assert len(c["gold_se"]) == N_MAX and c["gold_se"][0] >= 0
        f = c["fit"]
        assert f["n_points"] == N_MAX and f["r2"] <= 1.0 + 1e-9
        assert (f["peak_kl"] is None and f["peak_d"] is None) or f["peak_kl"] == pytest.approx(f["peak_d"] ** 2)

    for png in ("bon_gold.png", "bon_proxy.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert all(f"<td>{c}</td>" in page for c in CURVES) and "fit/peak_kl" in page


def test_bon_cli_rejects_bad_input(tiny_assets, tmp_path):
    cfg, _, paths = tiny_assets
    base = ["bon", "tiny", *_sets(cfg), "--out", str(tmp_path / "never")]
    assert "--n-max must be >= 1" in _exit_message([*base, "--n-max", "0"])
    assert "--prompts must be >= 1" in _exit_message([*base, "--prompts", "-3"])
    assert "--uwo-lambda must be >= 0" in _exit_message([*base, "--uwo-lambda", "-0.1"])
    assert "--n-best must be between 1 and --n-max (8" in _exit_message([*base, "--n-max", "8", "--n-best", "9"])
    assert "gold is one of its proxies" in _exit_message([*base, "--set", "task.objective=toxicity"])

    # no assets at all: the noisy ensemble's prepare command, with the overrides that select it
    msg = _exit_message(["bon", "tiny", *_sets(cfg, tmp_path / "empty"), "--out", str(tmp_path / "never")])
    assert "missing" in msg and "tether prepare tiny --set" in msg and "proxy.label_noise=0" not in msg

    # noisy assets only (copied): the clean ensemble is named, with its prepare command and --no-clean
    data = tmp_path / "noisy-only"
    for folder in (paths.policy, paths.gold, paths.proxies[0].parent):
        shutil.copytree(folder, data / cfg.task.name / folder.name)
    msg = _exit_message(["bon", "tiny", *_sets(cfg, data), "--out", str(tmp_path / "never")])
    assert "clean-label proxy ensemble" in msg and "--set proxy.label_noise=0" in msg and "--no-clean" in msg
    assert not (tmp_path / "never").exists()  # nothing started, nothing written


def test_bon_ns_and_small_n_max_report(tmp_path):
    """n_max 1 and 2 give curves but no fit (fewer than two distinct d > 0); the report is still written. Pure numpy inputs."""
    from learner.analysis.best_of_n import bon_ns, ensemble_bon_curves
    from learner.analysis.scaling_laws import fit_bon_curve
    from services.experiments.bon import fit_rows, write_bon_report

    ns = bon_ns(1000)
    assert ns[0] == 1 and ns[-1] == 1000 and ns == sorted(set(ns)) and 512 in ns and 30 <= len(ns) <= 60
    assert bon_ns(64) == list(range(1, 65))
    with pytest.raises(ValueError, match="n_max"):
        bon_ns(0)
    rng = np.random.default_rng(0)
    for n_max in (1, 2):
        members, gold = rng.normal(size=(3, n_max, 2)), rng.normal(size=(3, n_max))
        c = ensemble_bon_curves(members, gold, bon_ns(n_max), aggregation="wco", uwo_lambda=LAM)
        c["fit"] = fit_bon_curve(c["kl"], c["gold"])
        assert "error" in c["fit"] and "alpha" not in c["fit"]
        assert c["gold"][-1] == pytest.approx(gold[np.arange(3), members.min(-1).argmax(1)].mean())
        result = {"settings": {"name": "synthetic", "n_prompts": 3, "n_max": n_max, "uwo_lambda": LAM, "label_noise": {"noisy": 0.25},
                               "runtime/engine": "none", "aggregations": ["wco"]},
                  "samples": {}, "curves": {"noisy/wco": c}}
        page = write_bon_report(result, tmp_path / str(n_max))
        assert page.exists() and (tmp_path / str(n_max) / "bon_gold.png").exists()
        assert fit_rows(result)[0]["fit/alpha"] is None
