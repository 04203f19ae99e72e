// Compare 2-4 runs on one gold-vs-KL chart (each run's GET /runs/{id}/metrics, fetched incrementally).
import { api, setHash } from "./api.js";
import { drawCompare } from "./charts.js";
import { S, TERMINAL } from "./state.js";
import { $, el, fill, fmt, row } from "./ui.js";

let onBack = () => {}, showView = () => {}, onOpen = () => {};
const cache = new Map();  // run id -> {rec, rows, ids: Set of row ids}

export function initCompare({ back, show, open }) {
  onBack = back;
  onOpen = open;
  showView = show;
  $("compare-close").onclick = () => onBack();
}

export async function openCompare(ids) {
  ids = [...new Set(ids)].slice(0, 4);
  S.view = "compare";
  S.compare = { ids, runs: [], loaded: 0 };
  setHash({ compare: ids.join(",") });
  showView();
  $("compare-msg").textContent = "loading…";
  await refreshCompare();
}

async function load(id) {
  const c = cache.get(id) || { rec: null, rows: [], ids: new Set() };
  const rec = await api(`/runs/${encodeURIComponent(id)}`);
  const last = c.rows.length ? c.rows[c.rows.length - 1].step : null;
  // from the last step held (inclusive: a step can have a second row, the final evaluation), duplicates dropped by id
  const rows = await api(`/runs/${encodeURIComponent(id)}/metrics` + (last != null ? `?from_step=${last}` : ""));
  for (const r of rows) if (!c.ids.has(r.id)) { c.ids.add(r.id); c.rows.push(r); }
  c.rec = rec;
  cache.set(id, c);
  return { id, name: rec.name, rec, rows: c.rows };
}

/** Reload when shown and something is still running (every few seconds at most). */
export async function refreshCompare({ force = true } = {}) {
  const cmp = S.compare;
  if (S.view !== "compare" || !cmp.ids.length) return;
  if (!force && (Date.now() - cmp.loaded < 5000 || cmp.runs.every((r) => r.rec && TERMINAL.has(r.rec.state)))) return;
  const runs = await Promise.all(cmp.ids.map((id) => load(id).catch((e) => ({ id, name: "", rec: null, rows: [], error: e.message }))));
  if (S.compare !== cmp || S.view !== "compare") return;
  cmp.runs = runs;
  cmp.loaded = Date.now();
  const errors = runs.filter((r) => r.error).map((r) => `${r.id}: ${r.error}`);
  $("compare-msg").textContent = errors.length ? errors.join("; ") : `${runs.length} runs; the legend toggles each (its proxy too)`;
  $("compare-runs").replaceChildren(...runs.map((r) => el("span", { className: "chip", dataset: { id: r.id } }, `${r.id} ${r.name || ""} `,
    el("button", { type: "button", className: "link", title: "open this run", onclick: () => onOpen(r.id) }, "open"))));
  drawCompare($("chart-compare"), runs);
  fill($("compare-table").querySelector("tbody"), runs.map((r) => {
    const withKl = r.rows.filter((x) => x["kl/from_init"] != null);
    const last = withKl[withKl.length - 1] || {};
    const gold = r.rows.filter((x) => x["reward/gold_mean"] != null);
    const best = gold.reduce((b, x) => (b == null || x["reward/gold_mean"] > b["reward/gold_mean"] ? x : b), null);
    return row([r.id, r.name || "", r.rec ? r.rec.status : "?", r.rec?.config?.algorithm || r.rec?.algorithm || "-", r.rows.length,
      fmt(last["kl/from_init"]), fmt(last["reward/gold_mean"]), best ? `${fmt(best["reward/gold_mean"])} (${fmt(best["kl/from_init"])})` : "-",
      fmt(last["reward/proxy_mean"])], { dataset: { id: r.id } });
  }));
}
