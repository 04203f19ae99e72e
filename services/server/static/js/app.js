// tether console: plain ES modules, no build step. Wires the parts together and keeps the data fresh: a poll every
// 2 s (3 s while offline, until the server answers again) and, for the selected run, a live metric stream.
import { auth, conn, hashParams, saveToken } from "./api.js";
import { initCompare, openCompare, refreshCompare } from "./compare.js";
import { initCreate, loadPresets } from "./create.js";
import { initRun, refreshRun, restartStream, selectRun, showView } from "./run.js";
import { initRuns, refreshRuns, render as renderRuns } from "./runs.js";
import { S } from "./state.js";
import { $, feedback } from "./ui.js";

window.tether = S;  // for tests and the browser console

function renderConn() {
  $("offline").hidden = conn.state !== "offline";
  $("offline-why").textContent = conn.reason ? `(${conn.reason})` : "";
  $("auth").hidden = conn.state !== "auth";
  $("auth").textContent = conn.state === "auth" ? conn.reason : "";
  $("auth").dataset.status = conn.status || "";
  $("token").classList.toggle("invalid", conn.state === "auth");
  $("auth-state").textContent = !auth.token ? "no token set" : conn.state === "auth" ? "rejected" : "";
}
conn.listeners.push(renderConn);
conn.listeners.push((c) => { if (c.state === "ok") kick(); });  // back online (or a good token): refresh at once

let busy = false, again = false, timer = null, presetsLoaded = false;

async function tick() {
  if (busy) { again = true; return; }
  busy = true;
  clearTimeout(timer);
  try {
    await refreshRuns();
    if (!presetsLoaded && conn.state === "ok") presetsLoaded = await loadPresets();
    if (S.view === "run" && S.run) await refreshRun();
    if (S.view === "compare") await refreshCompare({ force: false });
  } catch (e) {
    console.error(e);
  } finally {
    busy = false;
    timer = setTimeout(tick, conn.state === "offline" ? 3000 : 2000);
    if (again) { again = false; setTimeout(tick, 0); }
  }
}
const kick = () => setTimeout(tick, 0);

$("token").value = auth.token;
$("token-form").onsubmit = (ev) => {
  ev.preventDefault();
  saveToken($("token").value.trim());
  feedback(auth.token ? "token saved in this browser (localStorage); it is sent only to this service" : "token cleared");
  renderConn();
  restartStream();
  kick();
};
$("forget-token").onclick = () => { saveToken(""); $("token").value = ""; renderConn(); kick(); };

initRuns({ select: selectRun, compare: openCompare });
initCreate({ created: (id) => { refreshRuns(); selectRun(id); } });
initRun();
initCompare({ back: () => { if (S.run) selectRun(S.run); else { S.view = "run"; showView(); } }, show: showView, open: selectRun });
renderConn();
renderRuns();
showView();

const h = hashParams();
if (h.get("run")) selectRun(h.get("run"));
if (h.get("compare")) openCompare(h.get("compare").split(",").filter(Boolean));
tick();
