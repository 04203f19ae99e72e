// One run: its record and state, the controls (with a confirmation step for stop and reset), the live metric
// stream (fetch + a stream reader, resumed after the last event id on every reconnection) and the charts.
import { api, authHeaders, classify, cmpId, conn, setConn, setHash, sleep, sseEvents } from "./api.js";
import { buildPanels, drawPanels } from "./charts.js";
import { cfgValue } from "./schema.js";
import { S, TERMINAL } from "./state.js";
import { updateRun } from "./runs.js";
import * as tabs from "./tabs.js";
import { $, feedback, fmt } from "./ui.js";

const STALE_MS = 15000;  // no byte (not even a keep-alive, sent every second or so) for this long: the connection is dead

export function initRun() {
  buildPanels($("charts"));
  for (const kind of ["pause", "resume"]) $("btn-" + kind).onclick = () => send(kind);
  $("btn-stop").onclick = () => ask("stop");
  $("btn-reset").onclick = () => ask("reset");
  $("confirm-no").onclick = hideConfirm;
  tabs.hooks.draw = draw;
  tabs.hooks.refresh = () => refreshRun();
  tabs.initTabs();
}

export function showView() {
  $("detail").hidden = S.view !== "run" || !S.run;
  $("compare").hidden = S.view !== "compare";
  $("placeholder").hidden = S.view === "compare" || !!S.run;
}

export function selectRun(id) {
  S.view = "run";
  setHash({ run: id, compare: null });
  if (S.run !== id) {
    S.streamGen++;  // ends the previous run's stream loop
    Object.assign(S, { run: id, record: null, missing: false, rows: [], lastId: null, streamEnded: false, streamLog: [], streamErrors: [],
                       commands: [], changes: [], checkpoints: [], samples: null, streamConnected: false });
    $("run-id").textContent = id;
    hideConfirm();
    tabs.resetForRun();
    for (const tr of document.querySelectorAll("#runs tr[data-id]")) tr.classList.toggle("sel", tr.dataset.id === id);
    renderRecord();
    draw();
    streamLoop(id, S.streamGen);
    refreshRun().then(() => tabs.loadSamples());
  }
  showView();
  draw();
}

/** After a token change: reconnect the stream now (from the last event received). */
export function restartStream() {
  if (!S.run || S.streamEnded) return;
  S.streamGen++;
  streamLoop(S.run, S.streamGen);
}

export async function refreshRun() {
  const id = S.run;
  if (!id) return;
  let rec;
  try {
    rec = await api(`/runs/${id}`);
  } catch (e) {
    if (S.run === id && e.status === 404) { S.missing = true; S.record = null; renderRecord(); }
    return;
  }
  if (S.run !== id) return;
  const [cmds, changes] = await Promise.all([api(`/runs/${id}/commands`).catch(() => null), api(`/runs/${id}/changes`).catch(() => null)]);
  if (S.run !== id) return;
  S.missing = false;
  S.record = rec;
  updateRun(rec);
  if (cmds) S.commands = cmds;
  if (changes) S.changes = changes;
  renderRecord();
  tabs.renderRunTabs();
  if (S.tab === "files") tabs.refreshFiles();
  draw();
}

function renderRecord() {
  const rec = S.record;
  const status = rec ? rec.status : (S.missing ? "missing" : "…");
  $("status").textContent = status;
  $("status").className = "badge " + status;
  $("run-name").textContent = rec?.name && rec.name !== S.run ? rec.name : "";
  $("run-algo").textContent = rec ? (rec.config?.algorithm || rec.algorithm || "ppo") : "";
  $("run-summary").textContent = rec?.config ? summary(rec.config) : "";
  $("error").hidden = !rec?.error;
  $("error").textContent = rec?.error ? "error: " + rec.error : "";
  const g = rec?.guard;
  $("guard").hidden = !g;
  $("guard").textContent = g ? `over-optimisation guard: alarm at iteration ${g.iteration} (${g.rule}); action: ${g.action}` +
    (g.pick_iteration != null ? `; best judged: iteration ${g.pick_iteration}` : "") + (g.reset ? `; reset: ${g.reset}` : "") : "";
  $("detail").classList.toggle("missing", S.missing);
  renderState();
  renderControls();
}

/** The config at a glance (the schema's defaults where it leaves a field out): what a researcher compares runs by. */
function summary(c) {
  const v = (path) => cfgValue(c, path), parts = [];
  if (v("algorithm") === "ppo") {
    parts.push(`KL ${v("kl.mode")} β ${fmt(v("kl.coef"), 4)}` + (v("kl.mode") === "adaptive" ? `, target ${fmt(v("kl.target"))}` : ""));
  } else parts.push(v("algorithm") || "");
  if (v("elastic_reset.enabled")) parts.push(`Elastic Reset every ${v("elastic_reset.every")} (η ${v("elastic_reset.eta")})`);
  const agg = v("ensemble.aggregation");
  parts.push(`proxy ensemble ${v("proxy.n_members") ?? "?"}× ${agg}` + (agg === "uwo" ? ` λ ${fmt(v("ensemble.uwo_lambda") ?? 0.1)}` : ""));
  parts.push(v("guard.enabled") ? `guard on: ${v("guard.action")} when ${v("guard.signal")} crosses ${fmt(v("guard.threshold"))}` : "guard off");
  parts.push(`${v("train.iterations")} iterations, evaluated every ${v("train.eval_every")}`);
  return parts.filter(Boolean).join(" · ");
}

function noMetrics(rec) {
  const st = rec.status;
  if (st === "queued") return `No metrics yet: the run is queued${rec.queue_position ? ` (#${rec.queue_position})` : ""}; it starts when the cluster has room.`;
  if (["submitted", "pending", "starting"].includes(st)) return `No metrics yet: the run's job is ${st}; its first iteration follows.`;
  if (TERMINAL.has(rec.state)) return `This run is ${rec.state} and logged no metrics.`;
  return `No metrics yet: the run is ${st}; the first iteration's metrics are on their way.`;
}

function renderState() {
  const rec = S.record;
  let kind = "", text = "";
  if (S.missing) {
    kind = "missing";
    text = `No run with id ${S.run} (404): it was never created on this service, or its record is gone.`;
  } else if (rec && (rec.state === "failed" || rec.state === "submit_failed")) {
    kind = "failed";
    text = `This run ${rec.state === "failed" ? "failed" : "could not be submitted"}` + (rec.error ? ": the reason is below." : " without a recorded reason.");
  } else if (rec && !S.rows.length && S.streamConnected) {
    kind = "nometrics";
    text = noMetrics(rec);
  }
  const box = $("run-state");
  box.hidden = !kind;
  box.className = "state " + kind;
  box.dataset.kind = kind;
  box.textContent = text;
}

/** Why each action cannot apply now (absent: it can): the run's state, the commands it has not taken yet, its config. */
export function blocked() {
  const rec = S.record, why = {};
  const all = (reason) => { for (const k of ["pause", "resume", "stop", "reset"]) why[k] = why[k] || reason; };
  if (!rec) { all(S.missing ? "no such run" : "loading the run"); return why; }
  const pending = S.commands.filter((c) => !c.ack);
  if (TERMINAL.has(rec.state)) all(`the run is ${rec.state}: it takes no more commands`);
  else if (pending.some((c) => c.type === "stop")) all("stopping: the stop command waits for the trainer's next iteration");
  else if (rec.state === "queued") {
    for (const k of ["pause", "resume", "reset"]) why[k] = "the run is queued: pause, resume and reset apply once it runs (stop takes it off the queue)";
  } else {
    let paused = rec.state === "paused";
    for (const c of pending) if (c.type === "pause" || c.type === "resume") paused = c.type === "pause";
    why[paused ? "pause" : "resume"] = paused ? "paused already (or a pause is on its way)" : "not paused";
  }
  if (!cfgValue(rec.config, "elastic_reset.enabled")) why.reset = why.reset || "reset needs elastic_reset.enabled: true in the run's config";
  return why;
}

function renderControls() {
  const why = blocked();
  for (const k of ["pause", "resume", "stop", "reset"]) {
    const b = $("btn-" + k);
    b.disabled = !!why[k];
    b.title = why[k] || "";
  }
  const general = S.record && (TERMINAL.has(S.record.state) || S.record.state === "queued" || why.stop?.startsWith("stopping")) ? (why.pause || why.stop) : "";
  $("controls-why").textContent = general || "";
  if (!$("confirm").hidden && why[$("confirm").dataset.kind]) hideConfirm();  // no longer applies
  tabs.renderParams();
}

function ask(kind) {
  const id = S.run, queued = S.record?.state === "queued";
  $("confirm-text").textContent = kind === "stop"
    ? (queued ? `Take run ${id} off the queue? It is cancelled and never starts.` : `Stop run ${id}? It ends after the current iteration, with a checkpoint.`)
    : `Elastic Reset run ${id} now? The policy is set to its EMA, the EMA to the initial policy, and the engines get the new weights.`;
  $("confirm-yes").textContent = kind === "stop" ? (queued ? "yes, cancel it" : "yes, stop it") : "yes, reset now";
  Object.assign($("confirm").dataset, { kind, run: id });
  $("confirm").hidden = false;
  $("confirm-yes").onclick = () => { hideConfirm(); if (S.run === id) send(kind); };
}

function hideConfirm() { $("confirm").hidden = true; $("confirm").dataset.kind = ""; }

async function send(kind) {
  const id = S.run;
  try {
    const r = await api(`/runs/${id}/${kind}`, { method: "POST" });
    feedback(r.command_id === "cancelled" ? `${id} taken off the queue (cancelled)`
      : `${kind} sent to ${id} (command ${r.command_id}); the trainer applies it between iterations`);
  } catch (e) {
    feedback(`${kind} not sent to ${id}: ${e.message}`, "error");
  }
  refreshRun();
}

// -- the metric stream ------------------------------------------------------------------------------------------------
function streamState(text) { $("stream-state").textContent = text; }

async function streamLoop(id, gen) {
  let delay = 1000;
  const live = () => S.run === id && S.streamGen === gen;
  while (live()) {
    const ctl = new AbortController();
    let dog;
    const pet = () => { clearTimeout(dog); dog = setTimeout(() => ctl.abort(), STALE_MS); };
    try {
      const after = S.lastId || "0";
      S.streamLog.push(after);
      streamState(S.streamLog.length > 1 ? `reconnecting (after ${after})…` : "connecting…");
      pet();
      const r = await fetch(`/runs/${encodeURIComponent(id)}/metrics/stream?after=${encodeURIComponent(after)}`,
        { headers: authHeaders(), signal: ctl.signal, cache: "no-store" });
      const c = await classify(r);
      if (!c.ok) {
        if (r.status === 404) { if (live()) { S.missing = true; S.record = null; renderRecord(); streamState(""); } return; }
        if (live()) streamState(`stream: ${c.error.message}`);
      } else {
        S.streamConnected = true;
        streamState("● live");
        for await (const ev of sseEvents(r)) {
          if (!live()) { ctl.abort(); return; }
          pet();
          if (ev.event === "metrics") {
            onRow(JSON.parse(ev.data), ev.id);
            delay = 1000;
          } else if (ev.event === "state") {
            refreshRun();
          } else if (ev.event === "end") {
            S.streamEnded = true;
            streamState("ended: " + (JSON.parse(ev.data).state || ""));
            renderState();
            refreshRun();
            return;
          } else if (ev.event === "error") {  // the server lost Redis: it closes the stream; reconnect from the last id
            const detail = JSON.parse(ev.data).detail;
            S.streamErrors.push(detail);
            setConn("offline", detail);
            break;
          }
        }
      }
    } catch (e) {
      if (!live()) return;
      if (ctl.signal.aborted) streamState("the stream went silent: reconnecting…");
      else setConn("offline", "the server is unreachable");
    } finally {
      clearTimeout(dog);
    }
    if (!live()) return;
    renderState();
    streamState(`stream dropped: reconnecting in ${Math.round(delay / 1000)} s (after ${S.lastId || "0"})`);
    await sleep(delay);
    delay = Math.min(delay * 2, conn.state === "auth" ? 10000 : 8000);
  }
}

function onRow(row, id) {
  if (id && S.lastId && cmpId(id, S.lastId) <= 0) return;  // already have it (a reconnection resumes after the last id)
  S.rows.push(row);
  if (id) S.lastId = id;
  if (S.rows.length === 1) renderState();
  scheduleDraw();
  if (row["eval/gold_mean"] != null || row["eval/proxy_mean"] != null) tabs.samplesOnEval();
}

// -- the charts -------------------------------------------------------------------------------------------------------
let drawTimer = null;
function scheduleDraw() {
  if (drawTimer == null) drawTimer = setTimeout(() => { drawTimer = null; draw(); }, 300);
}

/** Steps to mark: every Elastic Reset (scheduled, by command, by the guard), the guard's alarm, every parameter change. */
export function marks() {
  const out = [], seen = new Set();
  const add = (step, kind, label, key = kind) => {
    if (step == null || seen.has(key + ":" + step)) return;
    seen.add(key + ":" + step);
    out.push({ step, kind, label });
  };
  for (const r of S.rows) {
    if (r["elastic_reset/event"] === 1) add(r.step, "reset", "Elastic Reset");
    if (r["guard/reset"] === 1) add(r.step, "reset", "guard reset");
    if (r["guard/alarm_event"] === 1) add(r.step, "alarm", "guard alarm");
  }
  for (const c of S.commands) if (c.type === "reset" && c.ack?.ok) add(c.ack.step, "reset", "reset (command)");
  const g = S.record?.guard;  // an alarm at the final evaluation has no alarm_event row; rows are logged one step after the evaluation
  if (g?.iteration != null && !out.some((m) => m.kind === "alarm" && Math.abs(m.step - g.iteration) <= 1)) add(g.iteration, "alarm", "guard alarm");
  for (const ch of S.changes) add(ch.step, "change", `${ch.param} → ${fmt(ch.new)}`, "change-" + ch.param);
  return out;
}

function draw() {
  const last = S.rows[S.rows.length - 1];
  $("npoints").textContent = S.rows.length;
  $("step").textContent = last ? last.step : "-";
  $("charts-msg").textContent = S.rows.length ? "" : (S.missing ? "" : "no metrics yet");
  if (S.view !== "run" || S.tab !== "charts" || !S.run) return;
  const c = S.record?.config;
  drawPanels(S.rows, marks(), c ? { signal: cfgValue(c, "guard.signal"), threshold: cfgValue(c, "guard.threshold") } : {});
}
