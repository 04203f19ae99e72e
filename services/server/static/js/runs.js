// The runs list: newest first, a page at a time (GET /runs?offset&limit&state&q), with the compare selection.
import { api } from "./api.js";
import { S } from "./state.js";
import { $, el, fill } from "./ui.js";

const MAX_COMPARE = 4;
let onSelect = () => {}, onCompare = () => {};

export function initRuns({ select, compare }) {
  onSelect = select;
  onCompare = compare;
  $("f-state").onchange = () => { S.list.state = $("f-state").value; S.list.offset = 0; refreshRuns(); };
  let t;
  $("f-q").oninput = () => { clearTimeout(t); t = setTimeout(() => { S.list.q = $("f-q").value.trim(); S.list.offset = 0; refreshRuns(); }, 300); };
  $("page-prev").onclick = () => { S.list.offset = Math.max(0, S.list.offset - S.list.limit); refreshRuns(); };
  $("page-next").onclick = () => { S.list.offset += S.list.limit; refreshRuns(); };
  $("btn-compare").onclick = () => onCompare([...S.compareSel]);
  $("btn-compare-clear").onclick = () => { S.compareSel.clear(); render(); };
}

/** A service from before paging answered a plain list of records: page and filter it here. */
function pageOf(list, L) {
  const states = L.state ? new Set(L.state.split(",")) : null, q = L.q.toLowerCase();
  const runs = [...list].sort((a, b) => (b.created || 0) - (a.created || 0))
    .filter((r) => (!states || states.has(r.state)) && (!q || r.id.toLowerCase().includes(q) || String(r.name || "").toLowerCase().includes(q)));
  return { total: runs.length, offset: L.offset, limit: L.limit, runs: runs.slice(L.offset, L.offset + L.limit) };
}

export async function refreshRuns() {
  const L = S.list;
  const qs = new URLSearchParams({ offset: L.offset, limit: L.limit });
  if (L.state) qs.set("state", L.state);
  if (L.q) qs.set("q", L.q);
  let page;
  try {
    page = await api("/runs?" + qs);
  } catch (e) {
    if (e.status === 401 || e.status === 403) { L.runs = []; L.total = 0; render(); }
    return;  // offline and token problems are shown by the banners
  }
  if (Array.isArray(page)) page = pageOf(page, L);
  if (L.offset > 0 && L.offset >= page.total) {  // the page emptied (runs deleted, a narrower filter): back to the last one
    L.offset = Math.max(0, Math.floor((page.total - 1) / L.limit) * L.limit);
    return refreshRuns();
  }
  L.total = page.total;
  L.runs = page.runs;
  render();
}

export function render() {
  const L = S.list;
  const rows = L.runs.map((run) => {
    const box = el("input", { type: "checkbox", checked: S.compareSel.has(run.id), title: "compare this run",
      disabled: !S.compareSel.has(run.id) && S.compareSel.size >= MAX_COMPARE, onclick: (ev) => ev.stopPropagation(),
      onchange: (ev) => { if (ev.target.checked) S.compareSel.add(run.id); else S.compareSel.delete(run.id); render(); } });
    const status = el("span", { className: "badge " + run.status }, run.status);
    const tr = el("tr", { dataset: { id: run.id }, className: run.id === S.run ? "sel" : "", onclick: () => onSelect(run.id),
      title: run.error ? "error: " + run.error.split("\n")[0] : (run.guard ? "the guard's alarm was raised" : "") },
      el("td", { className: "c-cmp" }, box), el("td", { className: "c-id" }, run.id), el("td", { className: "c-name" }, run.name),
      el("td", { className: "c-status" }, status, run.guard ? " ⚠" : ""), el("td", { className: "c-queue" }, run.queue_position ? "#" + run.queue_position : "-"),
      el("td", { className: "c-it" }, run.iteration ?? 0), el("td", { className: "c-algo" }, run.algorithm || run.config?.algorithm || "-"));
    return tr;
  });
  fill($("runs").querySelector("tbody"), rows);
  $("runs-empty").hidden = L.runs.length > 0;
  $("runs-total").textContent = L.total ? `(${L.total})` : "";
  $("page-info").textContent = L.total ? `${L.offset + 1}–${L.offset + L.runs.length} of ${L.total}` : "";
  $("page-prev").disabled = L.offset === 0;
  $("page-next").disabled = L.offset + L.runs.length >= L.total;
  const n = S.compareSel.size;
  $("btn-compare").textContent = `compare selected (${n})`;
  $("btn-compare").disabled = n < 2 || n > MAX_COMPARE;
  $("btn-compare").title = n < 2 ? "tick 2 to 4 runs in the list" : "";
}

/** The selected run's fresher record (GET /runs/{id}) in its list row: the list and the detail never disagree. */
export function updateRun(rec) {
  const i = S.list.runs.findIndex((r) => r.id === rec.id);
  if (i < 0) return;
  const r = S.list.runs[i];
  if (r.status === rec.status && r.iteration === rec.iteration && !!r.guard === !!rec.guard) return;
  S.list.runs[i] = { ...r, status: rec.status, state: rec.state, iteration: rec.iteration, guard: rec.guard, error: rec.error,
                     queue_position: rec.queue_position };
  render();
}
