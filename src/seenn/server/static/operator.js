// The operator view: recent jobs of every user of the app, live, failures first.
// The secret key is kept in this tab's session storage only and sent in the
// Authorization header of GET /v1/jobs?recent=1 (a secret-key-only listing).
import { apiRoot, call, make, makeBar, pause, problem, setBar, setText, when } from "./common.js";

const STORAGE = "seenn.secretKey";
const POLL_MS = 2000;
const HIDDEN_POLL_MS = 10000;
const PAGE = 50;

const $ = (id) => document.getElementById(id);
const prefix = location.pathname.replace(/[^/]*$/, "");
const root = apiRoot(prefix);
let filters = { userId: "", jobType: "", status: "" };
let pages = 1;
let wake = null;

function recentUrl(cursor) {
  const query = new URLSearchParams({ recent: "1", limit: String(PAGE) });
  for (const [name, value] of Object.entries(filters)) if (value) query.set(name, value);
  if (cursor) query.set("cursor", cursor);
  return `${root}/jobs?${query}`;
}

/** Failed jobs first, then the others newest first (the server's order). */
export function failuresFirst(jobs) {
  const failed = jobs.filter((job) => job.status === "failed");
  return failed.concat(jobs.filter((job) => job.status !== "failed"));
}

// One row per job id, made once and updated in place, so bars move rather than redraw.
const rowsById = new Map();
const cellsOf = new WeakMap();
let rowCount = 0;

function makeRow() {
  const tr = make("tr");
  const title = make("a", "title");
  title.id = `job-title-${rowCount++}`;
  const bar = makeBar(true);
  bar.setAttribute("aria-labelledby", title.id);
  const cells = { title, bar, pct: make("span", "pct"), status: make("span", "status"),
                  user: make("td", "user"), type: make("td", "type"),
                  updated: make("td", "updated-at") };
  const first = make("td");
  first.append(title);
  const status = make("td");
  status.append(cells.status);
  const progress = make("td");
  progress.append(bar, cells.pct);
  tr.append(first, cells.user, cells.type, status, progress, cells.updated);
  cellsOf.set(tr, cells);
  return tr;
}

function row(job) {
  const id = String(job.id);
  let tr = rowsById.get(id);
  if (!tr) {
    tr = makeRow();
    rowsById.set(id, tr);
  }
  const cells = cellsOf.get(tr);
  const status = typeof job.status === "string" ? job.status : "";
  tr.className = status;
  setText(cells.title, job.title || job.jobType || job.id);
  cells.title.href = `${prefix}jobs/${encodeURIComponent(id)}`;
  setText(cells.user, job.userId);
  setText(cells.type, job.jobType);
  setText(cells.status, job.status);
  cells.status.className = "status " + status;
  setText(cells.pct, setBar(cells.bar, job.progress, job.status) + "%");
  setText(cells.updated, when(job.updatedAt));
  return tr;
}

async function refresh(key) {
  let jobs = [];
  let cursor = null;
  for (let page = 0; page < pages; page += 1) {
    const result = await call(recentUrl(cursor), key);
    if (result.status !== 200 || !result.body) return result;
    jobs = jobs.concat(result.body.jobs || []);
    cursor = result.body.nextCursor || null;
    if (!cursor) break;
  }
  const shown = failuresFirst(jobs).map(row);
  const keep = new Set(jobs.map((job) => String(job.id)));
  for (const id of [...rowsById.keys()]) if (!keep.has(id)) rowsById.delete(id);
  $("rows").replaceChildren(...shown);
  $("more").hidden = !cursor;
  setText($("list-notice"), jobs.length ? "" : "No jobs match.");
  return null;
}

async function live(key) {
  $("login").hidden = true;
  $("view").hidden = false;
  for (;;) {
    const failed = await refresh(key);
    if (failed && (failed.status === 401 || failed.status === 403)) {
      sessionStorage.removeItem(STORAGE);
      showLogin(problem(failed));
      return;
    }
    const notice = $("list-notice");
    if (failed) setText(notice, problem(failed));
    notice.classList.toggle("problem", Boolean(failed));
    await Promise.race([pause(document.hidden ? HIDDEN_POLL_MS : POLL_MS),
                        new Promise((resolve) => { wake = resolve; })]);
  }
}

function showLogin(message) {
  $("view").hidden = true;
  $("login").hidden = false;
  setText($("login-error"), message || "");
  $("secret").focus();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("secret").value.trim();
  if (!key) return;
  const result = await call(recentUrl(null), key);
  if (result.status === 403) {
    showLogin("This key cannot list jobs: the operator view needs the app's secret key (sk_…).");
    return;
  }
  if (result.status !== 200) {
    showLogin(problem(result));
    return;
  }
  $("secret").value = "";
  sessionStorage.setItem(STORAGE, key);
  live(key);
});

$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  filters = { userId: $("f-user").value.trim(), jobType: $("f-type").value.trim(),
              status: $("f-status").value };
  pages = 1;
  if (wake) wake();
});

$("more").addEventListener("click", () => {
  pages += 1;
  if (wake) wake();
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(STORAGE);
  location.reload();
});

const saved = sessionStorage.getItem(STORAGE);
if (saved) live(saved); else showLogin("");
