// The run's tabs besides the charts: live parameters with the command and change logs, samples at any evaluation,
// checkpoints and the HTML report, the config.
import { ApiError, api, messageOf } from "./api.js";
import { cfgValue } from "./schema.js";
import { S, TERMINAL } from "./state.js";
import { $, el, feedback, fill, fmt, row, when } from "./ui.js";

export const hooks = { draw: () => {}, refresh: () => {} };

export function initTabs() {
  for (const b of $("tabs").querySelectorAll("button")) b.onclick = () => showTab(b.dataset.tab);
  $("samples-step-sel").onchange = () => { $("samples-follow").checked = false; loadSamples(); };
  for (const id of ["samples-follow", "samples-order", "samples-count"]) $(id).onchange = () => loadSamples();
  $("btn-report").onclick = openReport;
  buildParams();
}

export function showTab(name) {
  S.tab = name;
  for (const b of $("tabs").querySelectorAll("button")) b.classList.toggle("on", b.dataset.tab === name);
  for (const t of document.querySelectorAll("#detail .tab")) t.hidden = t.id !== "tab-" + name;
  if (name === "charts") hooks.draw();
  if (name === "files") refreshFiles();
  if (name === "samples" && !S.samples) loadSamples();
  renderRunTabs();
}

export function resetForRun() {
  for (const id of ["samples", "commands", "changes", "checkpoints"]) fill($(id).querySelector("tbody"), []);
  $("samples-step-sel").replaceChildren();
  $("samples-follow").checked = true;
  $("samples-step").textContent = "";
  $("samples-msg").textContent = "no evaluation yet";
  $("report-link").hidden = true;
  $("report-msg").textContent = "";
  $("checkpoints-msg").textContent = "";
  $("config").textContent = "";
  for (const p of PARAMS) { $("param-" + p.key).value = ""; $("param-msg-" + p.key).textContent = ""; $("param-msg-" + p.key).className = "hint"; }
}

export function renderRunTabs() {
  renderParams();
  renderCommands();
  renderChanges();
  if (S.tab === "config") $("config").textContent = S.record?.config ? JSON.stringify(S.record.config, null, 2) : "";
  if (S.tab === "files") $("run-dir").textContent = S.record?.run_dir || "- (not started)";
}

// -- live parameters (PATCH /runs/{id}/params) -------------------------------------------------------------------------
const cfgOf = () => S.record?.config || {};
const v = (c, path) => cfgValue(c, path);
const PARAMS = [
  { key: "kl_coef", label: "KL coefficient β", kind: "float", path: "kl.coef",
    applies: (c) => (v(c, "algorithm") === "ppo" ? null : `kl_coef applies to algorithm ppo; this run uses ${v(c, "algorithm")}`) },
  { key: "kl_target", label: "KL target (nats)", kind: "float", path: "kl.target",
    applies: (c) => (v(c, "algorithm") !== "ppo" ? `kl_target applies to algorithm ppo; this run uses ${v(c, "algorithm")}`
      : v(c, "kl.mode") !== "adaptive" ? "kl_target needs kl.mode adaptive; this run has a fixed β (change kl_coef)" : null) },
  { key: "uwo_lambda", label: "UWO λ", kind: "float", path: "ensemble.uwo_lambda",
    applies: (c) => (v(c, "ensemble.aggregation") === "uwo" ? null : `uwo_lambda needs ensemble.aggregation uwo; this run uses ${v(c, "ensemble.aggregation")}`) },
  { key: "guard_action", label: "guard action (at its next alarm)", kind: ["alert", "stop", "reset"], path: "guard.action",
    applies: (c) => (v(c, "guard.enabled") ? null : "guard_action needs the guard armed (guard.enabled true)") },
  { key: "eval_every", label: "evaluate every (iterations)", kind: "int", path: "train.eval_every", applies: () => null },
];

function buildParams() {
  const rows = PARAMS.map((p) => {
    const input = Array.isArray(p.kind)
      ? el("select", { id: "param-" + p.key }, el("option", { value: "" }, "—"), ...p.kind.map((k) => el("option", { value: k }, k)))
      : el("input", { id: "param-" + p.key, type: "text", inputMode: "decimal", placeholder: p.kind === "int" ? "integer" : "number",
                      onkeydown: (ev) => { if (ev.key === "Enter") setParam(p); } });
    return row([p.label, el("td", { id: "param-now-" + p.key, className: "num" }), el("td", {}, input),
      el("td", {}, el("button", { type: "button", id: "set-" + p.key, onclick: () => setParam(p) }, "set")),
      el("td", { id: "param-msg-" + p.key, className: "hint" })], { dataset: { param: p.key } });
  });
  fill($("params").querySelector("tbody"), rows);
}

function paramNow(p) {
  const ch = [...S.changes].reverse().find((c) => c.param === p.key);
  let now = ch ? ch.new : v(cfgOf(), p.path);
  if (p.key === "uwo_lambda" && now == null && v(cfgOf(), "ensemble.aggregation") === "uwo") now = 0.1;  // the schema's default there
  let text = fmt(now, 4);
  if (p.key === "kl_coef") {
    const live = [...S.rows].reverse().find((r) => r["kl/coef"] != null);
    if (live) text += ` (β this iteration: ${fmt(live["kl/coef"], 4)})`;
  }
  return text;
}

export function paramBlocked(p) {
  const rec = S.record;
  if (!rec) return S.missing ? "no such run" : "loading";
  if (TERMINAL.has(rec.state)) return `the run is ${rec.state}`;
  if (rec.state === "queued") return "the run is queued: parameters change once it runs";
  return p.applies(cfgOf());
}

export function renderParams() {
  for (const p of PARAMS) {
    const why = paramBlocked(p);
    $("param-now-" + p.key).textContent = S.record ? paramNow(p) : "-";
    $("param-" + p.key).disabled = !!why;
    $("set-" + p.key).disabled = !!why;
    $("set-" + p.key).title = why || "";
    const msg = $("param-msg-" + p.key);
    if (!msg.classList.contains("err")) msg.textContent = why || "";
  }
}

function paramValue(p, raw) {
  if (Array.isArray(p.kind)) return raw;
  if (p.kind === "int" && /^[+-]?\d+$/.test(raw)) return Number(raw);
  if (p.kind === "float" && Number.isFinite(Number(raw))) return Number(raw);
  return raw;  // the service's schema says what is wrong with it (422), shown next to the parameter
}

async function setParam(p) {
  const raw = $("param-" + p.key).value.trim(), id = S.run, msg = $("param-msg-" + p.key);
  if (raw === "" || paramBlocked(p)) return;
  const value = paramValue(p, raw);
  msg.className = "hint";
  msg.textContent = "sending…";
  try {
    const r = await api(`/runs/${id}/params`, { method: "PATCH", body: { [p.key]: value } });
    msg.textContent = `sent (command ${r.command_id}): see its acknowledgement below`;
    $("param-" + p.key).value = "";
    feedback(`${p.key} → ${raw} sent to ${id} (command ${r.command_id}); the trainer applies it between iterations`);
  } catch (e) {
    const detail = e instanceof ApiError && Array.isArray(e.body?.detail) ? e.body.detail.map((d) => d.msg).join("; ") : messageOf(e.body, e.message);
    msg.className = "err";
    msg.textContent = (e.status ? e.status + ": " : "") + detail;
    feedback(`${p.key} not changed on ${id}: ${detail}`, "error");
  }
  hooks.refresh();
}

function renderCommands() {
  const rows = [...S.commands].reverse().map((c) => {
    const a = c.ack;
    const state = a ? (a.ok ? "ok" : "refused") : "pending";
    return row([when(c.created), c.type, Object.keys(c.args || {}).length ? JSON.stringify(c.args) : "",
      el("td", { className: state }, a ? `${a.ok ? "✓ applied" : "✗ refused"} ${when(a.time)}` : "pending…"),
      a ? fmt(a.step) : "-", a ? (typeof a.result === "string" ? a.result : JSON.stringify(a.result)) : ""], { dataset: { id: c.id, state } });
  });
  fill($("commands").querySelector("tbody"), rows);
}

function renderChanges() {
  const rows = [...S.changes].reverse().map((c) => row([c.step, when(c.time), c.param, fmt(c.old, 4), fmt(c.new, 4)], { dataset: { param: c.param } }));
  fill($("changes").querySelector("tbody"), rows);
}

// -- samples (GET /runs/{id}/samples) ------------------------------------------------------------------------------------
let samplesTimer = null, samplesSeq = 0;

/** A new evaluation arrived: show it if following the latest (its samples file is written before its metrics). */
export function samplesOnEval() {
  if (!$("samples-follow").checked) return;
  clearTimeout(samplesTimer);
  samplesTimer = setTimeout(loadSamples, 500);
}

export async function loadSamples() {
  const id = S.run, seq = ++samplesSeq;
  if (!id) return;
  const qs = new URLSearchParams({ order: $("samples-order").value, count: $("samples-count").value });
  const step = $("samples-step-sel").value;
  if (!$("samples-follow").checked && step !== "") qs.set("step", step);
  let page;
  try {
    page = await api(`/runs/${encodeURIComponent(id)}/samples?${qs}`);
  } catch (e) {
    if (S.run === id && seq === samplesSeq && e.status) $("samples-msg").textContent = messageOf(e.body, e.message);
    return;
  }
  if (S.run !== id || seq !== samplesSeq) return;
  S.samples = page;
  const sel = $("samples-step-sel");
  if ([...sel.options].map((o) => o.value).join() !== [...page.steps].reverse().join()) {
    sel.replaceChildren(...[...page.steps].reverse().map((s) => el("option", { value: s }, s)));
  }
  sel.value = String(page.step);
  $("samples-step").textContent = `(iteration ${page.step}, ${page.total} samples)`;
  $("samples-msg").textContent = page.samples.length < page.total ? `showing ${page.samples.length}` : "";
  // textContent only: a sample is model output and is never parsed as HTML
  fill($("samples").querySelector("tbody"), page.samples.map((x, i) => row([
    i + 1, el("td", { className: "text" }, x.prompt + " → " + x.response), el("td", { className: "num" }, fmt(x.proxy)),
    el("td", { className: "num" }, x.proxy_members.map((v) => fmt(v, 2)).join(" ")), el("td", { className: "num" }, fmt(x.gold)),
    el("td", { className: "num" }, fmt(x.disagreement, 2))])));
}

// -- checkpoints and the report -------------------------------------------------------------------------------------------
export async function refreshFiles() {
  const id = S.run;
  if (!id) return;
  $("run-dir").textContent = S.record?.run_dir || "- (not started)";
  try {
    const cks = await api(`/runs/${encodeURIComponent(id)}/checkpoints`);
    if (S.run !== id) return;
    S.checkpoints = cks;
    fill($("checkpoints").querySelector("tbody"), [...cks].reverse().map((c) => row([c.name, c.step, when(c.time), c.path])));
    $("checkpoints-msg").textContent = cks.length ? "" : "no checkpoints yet";
  } catch (e) {
    if (S.run === id && e.status) $("checkpoints-msg").textContent = messageOf(e.body, e.message);
  }
}

let reportUrl = null;

/** The report needs the token: fetched, then opened from a blob URL with a policy that runs no script. */
async function openReport() {
  const id = S.run, msg = $("report-msg");
  msg.textContent = "fetching…";
  try {
    const html = await (await api(`/runs/${encodeURIComponent(id)}/report`, { as: "blob" })).text();
    const csp = `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'">`;
    const safe = /^\s*<!doctype[^>]*>/i.test(html) ? html.replace(/^(\s*<!doctype[^>]*>)/i, `$1${csp}`) : csp + html;
    if (reportUrl) URL.revokeObjectURL(reportUrl);
    reportUrl = URL.createObjectURL(new Blob([safe], { type: "text/html" }));
    if (S.run !== id) return;
    const a = $("report-link");
    a.href = reportUrl;
    a.textContent = `report of ${id}`;
    a.hidden = false;
    msg.textContent = "";
    window.open(reportUrl, "_blank", "noopener");
  } catch (e) {
    msg.textContent = e.status === 409 ? "no report yet: " + messageOf(e.body) : e.message;
  }
}
