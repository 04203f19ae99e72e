// The page's state, one object (window.tether exposes it to tests and to the browser console).
export const S = {
  view: "run",            // "run" (one run's detail) or "compare"
  run: null,              // the selected run id
  record: null,           // GET /runs/{id}
  missing: false,         // GET /runs/{id} answered 404
  rows: [],               // metric rows received, in stream order
  lastId: null,           // the last metric event id received: a reconnection resumes after it
  streamGen: 0,           // bumped to end a stream loop
  streamLog: [],          // the `after` of every stream (re)connection, in order
  streamErrors: [],       // 'error' events received
  streamEnded: false,     // 'end' received: the run is over, no reconnection
  commands: [], changes: [], checkpoints: [],
  samples: null,          // the last GET /runs/{id}/samples page
  tab: "charts",
  list: { offset: 0, limit: 15, state: "", q: "", total: 0, runs: [] },
  presets: [],
  compare: { ids: [], runs: [] },
  compareSel: new Set(),
};
export const TERMINAL = new Set(["finished", "stopped", "failed", "cancelled", "submit_failed"]);
