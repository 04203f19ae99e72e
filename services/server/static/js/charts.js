// The run's charts with plotly (served by the service at /static/vendor/plotly.min.js): each panel against the
// iteration and against KL from the initial policy, with the guard's alarm, every Elastic Reset and every parameter
// change marked. Metric names as the trainer logs them (services/driver/train.py, learner/learners/ppo.py, learner/guard.py).
import { $, el } from "./ui.js";

// the guard's signals (learner/config/run.GUARD_SIGNALS); the ratios and rank agreement share a scale around 1
export const GUARD_SIGNALS = ["distinct2_ratio", "ppl_ratio", "rank_agreement", "gain_per_kl_ratio", "disagreement", "repetition",
  "gain_per_kl", "proxy_fit_beta"];
const GUARD_SHOWN = new Set(["distinct2_ratio", "ppl_ratio", "rank_agreement", "gain_per_kl_ratio"]);

export const PANELS = [
  { id: "reward", title: "reward: proxy (what PPO optimises) and gold (held-out judge)", y: "reward", series: [
    ["reward/proxy_mean", "proxy (train batch)", { color: "#1f6fc5" }], ["reward/gold_mean", "gold (train batch)", { color: "#d08a00" }],
    ["eval/proxy_mean", "proxy (evaluation)", { color: "#1f6fc5", dash: "dot", symbol: "diamond" }],
    ["eval/gold_mean", "gold (evaluation)", { color: "#d08a00", dash: "dot", symbol: "diamond" }]] },
  { id: "kl", title: "KL from the initial policy (nats per sequence)", y: "nats", series: [
    ["kl/from_init", "train batch", { color: "#6a3fb5" }], ["eval/kl_from_init_k3", "evaluation", { color: "#6a3fb5", dash: "dot" }],
    ["kl/to_ref", "KL to the reference (the penalty's)", { color: "#999" }]] },
  { id: "klcoef", title: "KL coefficient β (kl/coef)", y: "β", series: [["kl/coef", "β used this iteration", { color: "#2b8a3e" }]] },
  { id: "ensemble", title: "proxy ensemble: std across members (ensemble/std)", y: "std", series: [["ensemble/std", "ensemble std", { color: "#c2255c" }]] },
  { id: "guard", title: "the gold-free guard's signals (guard/…)", y: "signal", series: GUARD_SIGNALS.map((s) => ["guard/" + s, s, {}]) },
];

const isEval = (k) => k.startsWith("eval/") || k.startsWith("guard/");
/** The KL a row's value belongs with: an evaluation's own KL for evaluation metrics, the train batch's otherwise. */
export function klOf(row, key) {
  const a = row["kl/from_init"], b = row["eval/kl_from_init_k3"];
  return isEval(key) ? (b ?? a) : (a ?? b);
}

export const hasPlotly = () => typeof window.Plotly !== "undefined";

export function buildPanels(host) {
  host.replaceChildren();
  if (!hasPlotly()) {
    host.append(el("p", { className: "state failed" }, "charts unavailable: /static/vendor/plotly.min.js did not load"));
    return;
  }
  for (const p of PANELS) {
    host.append(el("div", { className: "chart-row", id: `panel-${p.id}` }, el("h3", {}, p.title),
      el("div", { className: "chart", id: `chart-${p.id}-step` }), el("div", { className: "chart", id: `chart-${p.id}-kl` })));
  }
}

const BASE = {
  height: 270, margin: { l: 52, r: 12, t: 8, b: 96 }, showlegend: true, uirevision: "keep", hovermode: "closest",
  legend: { orientation: "h", x: 0, y: -0.3, yanchor: "top", font: { size: 10 } }, font: { size: 11 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
};
// small charts: no mode bar (drag zooms, double-click resets); the compare chart has one
const CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };
const CONFIG_BIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
const MARK_STYLE = { reset: { color: "#d62728", dash: "dash" }, alarm: { color: "#ff7f0e", dash: "solid" }, change: { color: "#888", dash: "dot" } };

/** Vertical lines (and labels) for the marks {x, kind, label} on one chart. */
function markLayout(marks) {
  const shapes = [], annotations = [];
  for (const m of marks) {
    if (m.x == null || !Number.isFinite(m.x)) continue;
    const s = MARK_STYLE[m.kind];
    shapes.push({ type: "line", name: m.kind, xref: "x", yref: "paper", x0: m.x, x1: m.x, y0: 0, y1: 1,
      line: { color: s.color, dash: s.dash, width: m.kind === "alarm" ? 2 : 1.2 } });
    if (m.kind !== "reset") {  // resets are many (every N iterations): their legend entry says what the lines are
      annotations.push({ name: m.kind, x: m.x, xref: "x", y: 1, yref: "paper", yanchor: "top", xanchor: "left", text: m.label,
        showarrow: false, font: { size: 9, color: s.color }, bgcolor: "rgba(255,255,255,.7)" });
    }
  }
  return { shapes, annotations };
}

/** Legend entries (no points) for the kinds of marks a chart shows. */
function markLegend(marks) {
  const kinds = new Set(marks.filter((m) => m.x != null && Number.isFinite(m.x)).map((m) => m.kind));
  const names = { reset: "Elastic Reset", alarm: "guard alarm", change: "parameter change" };
  return [...kinds].map((k) => ({ type: "scatter", mode: "lines", x: [null], y: [null], name: names[k], meta: "mark:" + k, hoverinfo: "skip",
    line: { color: MARK_STYLE[k].color, dash: MARK_STYLE[k].dash, width: 1.5 } }));
}

/** Marks as steps: {step, kind, label}; on the KL charts each is placed at the KL of the nearest logged step. */
function atKl(marks, rows) {
  const kl = rows.filter((r) => r["kl/from_init"] != null);
  return marks.map((m) => {
    let best = null;
    for (const r of kl) if (best == null || Math.abs(r.step - m.step) < Math.abs(best.step - m.step)) best = r;
    return { ...m, x: best ? best["kl/from_init"] : null };
  });
}

function traces(panel, rows, axis, guardSignal) {
  const out = [];
  for (const [key, name, style] of panel.series) {
    if (axis === "kl" && (key === "kl/from_init" || key === "eval/kl_from_init_k3")) continue;  // KL against itself says nothing
    const pts = rows.filter((r) => r[key] != null && (axis === "step" || klOf(r, key) != null));
    if (!pts.length) continue;
    const sig = key.startsWith("guard/") ? key.slice(6) : null;
    const watched = sig && sig === guardSignal;
    out.push({
      type: "scatter", name: watched ? name + " (the alarm's signal)" : name, meta: key,
      mode: axis === "step" ? "lines+markers" : "markers",
      x: pts.map((r) => (axis === "step" ? r.step : klOf(r, key))), y: pts.map((r) => r[key]),
      line: { color: style.color, dash: style.dash, width: watched ? 2.5 : 1.5 },
      marker: { size: axis === "step" ? 4 : 5, symbol: style.symbol, color: style.color },
      visible: sig && !watched && !GUARD_SHOWN.has(sig) ? "legendonly" : true,
      hovertemplate: `${name}<br>%{y:.4g} at ${axis === "step" ? "step %{x}" : "KL %{x:.3g}"}<extra></extra>`,
    });
  }
  return out;
}

/** Draw every panel (only those in the DOM). marks: [{step, kind: reset|alarm|change, label}]; guard: {signal, threshold}. */
export function drawPanels(rows, marks, guard = {}) {
  if (!hasPlotly()) return;
  for (const p of PANELS) {
    for (const axis of ["step", "kl"]) {
      const div = $(`chart-${p.id}-${axis}`);
      if (!div || !div.offsetParent) continue;  // hidden tab: drawn when shown
      const data = traces(p, rows, axis, guard.signal);
      const placed = axis === "step" ? marks.map((m) => ({ ...m, x: m.step })) : atKl(marks, rows);
      const ml = markLayout(placed);
      if (p.id === "guard" && guard.signal && Number.isFinite(guard.threshold)) {  // the rule's threshold on its signal
        ml.shapes.push({ type: "line", name: "threshold", xref: "paper", x0: 0, x1: 1, yref: "y", y0: guard.threshold, y1: guard.threshold,
          line: { color: "#ff7f0e", dash: "dashdot", width: 1 } });
      }
      if (!data.length) {
        ml.annotations.push({ text: rows.length ? "this run logs none of these metrics" : "no metrics yet", xref: "paper", yref: "paper",
          x: 0.5, y: 0.5, showarrow: false, font: { size: 12, color: "#999" } });
      }
      Plotly.react(div, data.length ? [...data, ...markLegend(placed)] : data, {
        ...BASE, ...ml,
        xaxis: { title: { text: axis === "step" ? "iteration (step)" : "KL from the initial policy (nats)", standoff: 4 }, zeroline: false },
        yaxis: { title: { text: p.y }, zeroline: false, automargin: true },
      }, CONFIG);
    }
  }
}

/** One gold-vs-KL chart of several runs: runs = [{id, name, rows}]. The curve is each run's held-out evaluations (gold at
 * the evaluation's KL), the faint points its train batches; the proxy is in the legend, off by default. */
export function drawCompare(div, runs) {
  if (!hasPlotly()) { div.textContent = "charts unavailable: /static/vendor/plotly.min.js did not load"; return; }
  const data = [];
  runs.forEach((run, i) => {
    const color = COLORS[i % COLORS.length], label = `${run.id}${run.name ? " " + run.name : ""}`;
    const ev = run.rows.filter((r) => r["eval/gold_mean"] != null && klOf(r, "eval/gold_mean") != null);
    data.push({ type: "scatter", mode: "lines+markers", name: `${label}: gold (evaluations)`, meta: run.id,
      x: ev.map((r) => klOf(r, "eval/gold_mean")), y: ev.map((r) => r["eval/gold_mean"]), line: { color, width: 1.5 }, marker: { size: 7, color },
      text: ev.map((r) => "step " + r.step), hovertemplate: `${run.id}<br>gold %{y:.4g} at KL %{x:.3g} (%{text})<extra></extra>` });
    const tr = run.rows.filter((r) => r["reward/gold_mean"] != null && r["kl/from_init"] != null);
    data.push({ type: "scatter", mode: "markers", name: `${label}: gold (train batches)`, meta: run.id + ":train", opacity: 0.35,
      x: tr.map((r) => r["kl/from_init"]), y: tr.map((r) => r["reward/gold_mean"]), marker: { size: 4, color },
      text: tr.map((r) => "step " + r.step), hovertemplate: `${run.id} train batch<br>gold %{y:.4g} at KL %{x:.3g} (%{text})<extra></extra>` });
    const pe = run.rows.filter((r) => r["eval/proxy_mean"] != null && klOf(r, "eval/proxy_mean") != null);
    data.push({ type: "scatter", mode: "lines", name: `${label}: proxy (evaluations)`, meta: run.id + ":proxy", visible: "legendonly",
      x: pe.map((r) => klOf(r, "eval/proxy_mean")), y: pe.map((r) => r["eval/proxy_mean"]), line: { color, width: 1.5, dash: "dot" } });
  });
  Plotly.react(div, data, {
    ...BASE, height: 460, legend: { orientation: "h", x: 0, y: -0.14, yanchor: "top", font: { size: 11 } }, margin: { l: 60, r: 16, t: 10, b: 110 },
    xaxis: { title: { text: "KL from the initial policy (nats)", standoff: 4 }, zeroline: false },
    yaxis: { title: { text: "gold reward" }, zeroline: false },
  }, CONFIG_BIG);
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
