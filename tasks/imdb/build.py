"""`tether prepare`: build (or reuse) every artefact of the IMDB task, stage by stage.

Stages and what keys them:
  policy  <- task, tokenizer, policy           (tokenizer + pretrained initial policy, one HF folder)
  gold    <- task, gold (+ tokenizer, policy for the contextual judge, fine-tuned from pi_0's backbone)
  proxy   <- task, tokenizer, policy, gold, proxy, generation  (k Bradley-Terry reward models)
  sft     <- task, tokenizer, policy, reference's SFT fields   (SALSA: n fine-tunes of pi_0; only for reference.kind sft/soup)
The toxicity objective needs no gold or proxy stage: alt-profanity-check ships its model.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from learner.config import TetherConfig
from tasks import store
from tasks.contract import TaskPaths
from tasks.imdb.data import ImdbSplit, load_imdb

log = logging.getLogger(__name__)
REPO_ASSETS = Path(__file__).resolve().parents[2] / "assets"
COMMITTED_POLICY = REPO_ASSETS / "imdb-policy"
COMMITTED_GOLD = REPO_ASSETS / "imdb-gold"  # the default contextual judge: about 6 minutes to train on 2 cores


# Fields that build nothing of this task (the dataset task's, the user's scorers): left out of the stage keys, so that
# adding them kept every existing artefact's key (the committed policy's among them).
_NOT_BUILT = {"task": {"objective", "data"}, "gold": {"label", "scorer", "committed_checkpoint"}, "proxy": {"source", "scorers", "preferences"},
              "generation": {"n_per_prompt"}}  # the proxies' pairs are one sample per prompt whatever a run's n_per_prompt


def _parts(cfg: TetherConfig, stage: str) -> dict:
    task = cfg.task.model_dump(exclude=_NOT_BUILT["task"])  # the objective picks scorers, it builds nothing here
    pol = cfg.policy.model_dump(exclude={"committed_checkpoint", "lora"})  # lora: how a run trains it, not the asset
    gold_dump, proxy_dump = cfg.gold.model_dump(exclude=_NOT_BUILT["gold"]), cfg.proxy.model_dump(exclude=_NOT_BUILT["proxy"])
    if stage == "policy":
        return {"task": task, "tokenizer": cfg.tokenizer.model_dump(), "policy": pol}
    if stage == "gold":
        if cfg.gold.kind == "contextual":
            return {"task": task, "gold": gold_dump, "tokenizer": cfg.tokenizer.model_dump(), "policy": pol, "base": cfg.policy.name_or_path}
        return {"task": task, "gold": gold_dump}
    if stage == "proxy":
        return {
            "task": task, "tokenizer": cfg.tokenizer.model_dump(), "policy": pol, "gold": gold_dump,
            "proxy": proxy_dump, "generation": cfg.generation.model_dump(exclude=_NOT_BUILT["generation"]),
        }
    if stage == "sft":
        r = cfg.reference
        return {"task": task, "tokenizer": cfg.tokenizer.model_dump(), "policy": pol, "base": cfg.policy.name_or_path,
                "sft": {"n": r.n_sft_, "tokens": r.sft_tokens_, "lr": r.sft_lr_}}
    raise KeyError(stage)


def task_dir(cfg: TetherConfig) -> Path:
    return Path(cfg.data_dir) / cfg.task.name


def stage_folder(cfg: TetherConfig, stage: str) -> tuple[Path, str]:
    key = store.stage_key(stage, _parts(cfg, stage))
    return task_dir(cfg) / f"{stage}-{key}", key


def hint(cfg_source: str) -> str:
    return f"tether prepare {cfg_source}"


def required(cfg: TetherConfig, stage: str) -> list[str]:
    """Files a usable artefact of this stage must hold."""
    if stage == "proxy":
        return [f"member-{i}/model.safetensors" for i in range(cfg.proxy.n_members)]
    if stage == "sft":
        return [f"sft-{i}/model.safetensors" for i in range(cfg.reference.n_sft_)]
    if stage == "gold" and cfg.gold.kind == "contextual":
        return ["gold.json", "ngram.npz", "ngram_vocab.json", "sentiment/model.safetensors"]
    return {"policy": ["config.json", "model.safetensors", "tokenizer.json"], "gold": ["gold.npz", "vocab.json"]}[stage]


def resolve(cfg: TetherConfig, *, cfg_source: str = "<config>") -> TaskPaths:
    """Paths of ready artefacts for a config, raising AssetError (with the rebuild command) if any is unusable."""
    pol: Path | str
    if cfg.policy.name_or_path:
        pol = cfg.policy.name_or_path
    else:
        f, k = stage_folder(cfg, "policy")
        store.check_artefact(f, "policy", k, required(cfg, "policy"), hint(cfg_source))
        pol = f
    gold: Path | str
    proxies: list[Path | str]
    if cfg.task.objective == "toxicity":  # a scorer configuration: alt-profanity-check as the gold and the one proxy (Quark)
        profanity = {"kind": "profanity", "name": "profanity"}
        gold, proxies = dict(profanity), [dict(profanity)]
    else:
        if cfg.gold.scorer_spec() is not None:  # a Hugging Face classifier or any scorer of the user's
            gold = cfg.gold.scorer_spec().model_dump()  # type: ignore[union-attr]
        else:
            f, k = stage_folder(cfg, "gold")
            store.check_artefact(f, "gold", k, required(cfg, "gold"), hint(cfg_source))
            gold = f
        if cfg.proxy.source == "scorers":  # the user's scorers as they are: nothing built
            proxies = [s.model_dump() for s in cfg.proxy.scorers]
        else:
            f, k = stage_folder(cfg, "proxy")
            store.check_artefact(f, "proxy", k, required(cfg, "proxy"), hint(cfg_source))
            proxies = [f / f"member-{i}" for i in range(cfg.proxy.n_members)]
    r = cfg.reference
    if r.kind == "initial":
        return TaskPaths(pol, gold, proxies, base_policy=pol)
    f, k = stage_folder(cfg, "sft")
    store.check_artefact(f, "sft", k, required(cfg, "sft"), hint(cfg_source))
    sft = [f / f"sft-{i}" for i in range(r.n_sft_)]
    start = sft[r.start_]
    if r.kind == "sft":
        return TaskPaths(start, gold, proxies, reference=[start], reference_weights=[1.0], base_policy=pol)
    return TaskPaths(start, gold, proxies, reference=sft, reference_weights=r.weights_, base_policy=pol)


def prepare(cfg: TetherConfig, *, rebuild: bool = False, cfg_source: str = "<config>") -> dict:
    """Build whatever is missing or stale; returns {stage: manifest}."""
    td = task_dir(cfg)
    td.mkdir(parents=True, exist_ok=True)
    split = load_imdb(cfg.task)
    out = {}
    out["policy"] = _policy_stage(cfg, split, rebuild)
    if cfg.task.objective == "sentiment":
        out["gold"] = _gold_stage(cfg, split, rebuild)
        if cfg.proxy.source == "synthetic":
            out["proxy"] = _proxy_stage(cfg, split, rebuild)
        elif cfg.proxy.source == "preferences":
            raise store.AssetError("proxy.source 'preferences' is for a dataset task (task.name: dataset); the imdb task trains its proxies "
                                   "on synthetic gold labels (proxy.source: synthetic) or uses proxy.scorers as they are")
    if cfg.reference.kind != "initial":
        out["sft"] = _sft_stage(cfg, split, rebuild)
    return out


def _built_stage(cfg: TetherConfig, stage: str, rebuild: bool, build) -> dict:
    """Reuse an up-to-date artefact, or run ``build(tmp_dir) -> metrics`` and commit it with its manifest."""
    folder, key = stage_folder(cfg, stage)
    return store.build_stage(folder, stage, key, _parts(cfg, stage), required(cfg, stage), build, rebuild=rebuild, index_dir=task_dir(cfg))


def _sft_stage(cfg: TetherConfig, split: ImdbSplit, rebuild: bool) -> dict:
    from tasks.imdb.sft import build_sft

    r, p = cfg.reference, cfg.policy
    return _built_stage(cfg, "sft", rebuild, lambda tmp: build_sft(
        resolve_partial(cfg)["policy"], tmp, split.train_text, split.heldout_text, n=r.n_sft_, tokens=r.sft_tokens_, lr=r.sft_lr_,
        seed=cfg.task.seed, batch_size=p.batch_size, context=p.context))


def _reuse(cfg: TetherConfig, stage: str, rebuild: bool) -> dict | None:
    """The manifest of an up-to-date artefact, or None when it must be (re)built."""
    if rebuild:
        return None
    folder, key = stage_folder(cfg, stage)
    return store.reuse(folder, stage, key, required(cfg, stage))


def _use_committed(cfg: TetherConfig, stage: str, committed_dir: Path, complete=None) -> dict | None:
    """Copy the artefact committed under assets/ into the stage's folder when its manifest carries this config's key;
    ``complete(tmp)`` adds what is cheaper to rebuild than to ship (the gold's word trigram model: seconds, 15 MB)."""
    folder, key = stage_folder(cfg, stage)
    committed = store.read_manifest(committed_dir)
    if committed is None or committed.get("key") != key:
        return None
    log.info("%s: using the committed artefact %s", stage, committed_dir)
    tmp = store.fresh_dir(folder)
    shutil.copytree(committed_dir, tmp, dirs_exist_ok=True)
    if complete is not None:
        complete(tmp)
    if missing := [r for r in required(cfg, stage) if not (tmp / r).exists()]:
        shutil.rmtree(tmp)
        log.warning("%s: the committed artefact %s lacks %s; building instead", stage, committed_dir, ", ".join(missing))
        return None
    store.commit_dir(tmp, folder)
    store.update_index(task_dir(cfg), stage, committed, folder)
    return committed


def _policy_stage(cfg: TetherConfig, split: ImdbSplit, rebuild: bool) -> dict:
    if cfg.policy.name_or_path:
        return {"stage": "policy", "source": cfg.policy.name_or_path, "note": "loaded from_pretrained; not built here"}
    folder, key = stage_folder(cfg, "policy")
    if (m := _reuse(cfg, "policy", rebuild)) is not None:
        return m
    if not rebuild and cfg.policy.committed_checkpoint and (m := _use_committed(cfg, "policy", COMMITTED_POLICY)) is not None:
        return m
    from tasks.imdb.data import make_prompts
    from tasks.imdb.policy import pretrain, sample
    from tasks.imdb.tokenizer import train_tokenizer

    t0 = time.time()
    tmp = folder.with_name(folder.name + ".building")
    resumable = (tmp / "pretrain_state.pt").exists() and (tmp / "key").exists() and (tmp / "key").read_text() == key and not rebuild
    if not resumable:
        tmp = store.fresh_dir(folder)
        (tmp / "key").write_text(key)
    log.info("policy: training tokenizer (vocab %d) and pretraining %d tokens", cfg.tokenizer.vocab_size, cfg.policy.pretrain_tokens)
    tok = train_tokenizer(split.train_text, cfg.tokenizer.vocab_size, tmp)
    metrics = pretrain(cfg.policy, tok, split.train_text, split.heldout_text, tmp, seed=cfg.task.seed)
    from learner.models.policy import load_policy

    model = load_policy(tmp)
    prompts = make_prompts(split.heldout_text, 4, cfg.task, seed=7)
    conts = sample(model, tok, prompts, max_new_tokens=cfg.generation.max_new_tokens, seed=7)
    metrics["samples"] = [{"prompt": p, "continuation": c} for p, c in zip(prompts, conts)]
    (tmp / "key").unlink()
    m = store.write_manifest(tmp, "policy", key, _parts(cfg, "policy"), metrics, time.time() - t0)
    store.commit_dir(tmp, folder)
    store.update_index(task_dir(cfg), "policy", m, folder)
    return m


def _ngram_for(split: ImdbSplit):
    """The contextual gold's word trigram model, rebuilt from the training reviews exactly as train_contextual_gold builds it."""
    def complete(tmp: Path) -> None:
        from learner.models.ngram import TrigramLM

        TrigramLM.fit(split.train_text).save(tmp)
    return complete


def _gold_stage(cfg: TetherConfig, split: ImdbSplit, rebuild: bool) -> dict:
    if cfg.gold.scorer_spec() is not None:
        return {"stage": "gold", "source": cfg.gold.scorer_spec().display, "note": "a scorer used as it is; not built here"}
    from tasks.imdb.gold import train_contextual_gold, train_gold

    if cfg.gold.kind == "contextual":
        if (m := _reuse(cfg, "gold", rebuild)) is not None:
            return m
        if not rebuild and cfg.gold.committed_checkpoint and (m := _use_committed(cfg, "gold", COMMITTED_GOLD, _ngram_for(split))) is not None:
            return m
        policy = resolve_partial(cfg)["policy"]
        return _built_stage(cfg, "gold", rebuild, lambda tmp: train_contextual_gold(cfg.gold, split, policy, tmp, seed=cfg.task.seed))
    return _built_stage(cfg, "gold", rebuild, lambda tmp: train_gold(cfg.gold, split, tmp))


def _proxy_stage(cfg: TetherConfig, split: ImdbSplit, rebuild: bool) -> dict:
    from tasks.imdb.proxy import build_proxies

    paths = resolve_partial(cfg)
    return _built_stage(cfg, "proxy", rebuild, lambda tmp: build_proxies(cfg, split, paths["policy"], paths["gold"], tmp))


def resolve_partial(cfg: TetherConfig) -> dict:
    pol = cfg.policy.name_or_path or stage_folder(cfg, "policy")[0]
    gold = cfg.gold.scorer_spec().model_dump() if cfg.gold.scorer_spec() is not None else stage_folder(cfg, "gold")[0]
    return {"policy": pol, "gold": gold}

