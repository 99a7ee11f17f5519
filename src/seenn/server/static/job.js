// The status page of one job: /jobs/{id}#key=<pk_ key or ut_ user token>.
// The key lives in the URL fragment, which browsers never send to a server; it is sent
// only in the Authorization header of the API calls. The page follows the job with the
// long poll when the server offers it (GET /v1/healthz "extensions.wait"), with ETag
// polling otherwise, and stops at a terminal status.
import {
  TERMINAL, apiRoot, call, longPollSeconds, make, makeBar, pause, problem, remaining,
  safeUrl, setBar, setText, when,
} from "./common.js";

const POLL_MS = 1000;
const HIDDEN_POLL_MS = 5000;
const CHILDREN_EVERY = 3; // unchanged polls between two reads of the children

const $ = (id) => document.getElementById(id);
const notice = $("notice");

function say(text, isProblem) {
  setText(notice, text);
  notice.classList.toggle("problem", Boolean(isProblem));
  notice.hidden = !text;
}

function readLocation() {
  const path = location.pathname;
  const at = path.lastIndexOf("/jobs/");
  let jobId = null;
  try {
    jobId = decodeURIComponent(path.slice(at + "/jobs/".length));
  } catch {
    jobId = null;
  }
  const fragment = new URLSearchParams(location.hash.slice(1));
  const key = fragment.get("key") || fragment.get("token") ||
    sessionStorage.getItem("seenn.secretKey");
  return { prefix: path.slice(0, at), jobId, key };
}

function showRow(rowId, valueId, text) {
  setText($(valueId), text);
  $(rowId).hidden = !text;
}

let current = null;

function render(job) {
  current = job;
  $("card").hidden = false;
  const title = job.title || job.jobType || job.id;
  setText($("title"), title);
  setText($("job-type"), job.jobType);
  const status = $("status");
  setText(status, job.status);
  status.className = "status " + (typeof job.status === "string" ? job.status : "");
  const value = setBar($("bar"), job.progress, job.status);
  setText($("percent"), value + "%");
  document.title = `${value}% · ${title} · seenn`;

  const stage = job.stage;
  let stageText = "";
  if (stage && typeof stage === "object") {
    stageText = stage.name || "";
    if (stage.total) stageText = `${stage.current} of ${stage.total}` + (stageText ? `: ${stageText}` : "");
    if (stage.description) stageText += ` (${stage.description})`;
  }
  showRow("stage-row", "stage", stageText);
  showRow("message-row", "message", job.message || "");
  const queue = job.queue;
  let queueText = "";
  if (queue && typeof queue === "object" && !TERMINAL.has(job.status) && job.status !== "running") {
    queueText = `position ${queue.position}` + (queue.total ? ` of ${queue.total}` : "") +
      (queue.queueName ? ` in ${queue.queueName}` : "");
  }
  showRow("queue-row", "queue", queueText);
  renderEta();

  const result = job.result;
  const resultBox = $("result");
  resultBox.hidden = !(job.status === "completed" && result && (result.url || result.type));
  if (!resultBox.hidden) {
    const link = $("result-link");
    const href = safeUrl(result.url);
    link.hidden = !href;
    if (href) {
      link.href = href;
      setText(link, result.url);
    }
    setText($("result-text"), href ? "" : (result.url || result.type || ""));
  }
  const error = job.error;
  $("error").hidden = !(job.status === "failed" || job.status === "cancelled") || !error;
  if (error) {
    setText($("error-code"), error.code);
    setText($("error-message"), error.message);
  }
  const updated = $("updated");
  setText(updated, when(job.updatedAt));
  updated.setAttribute("datetime", String(job.updatedAt ?? ""));
}

function renderEta() {
  const job = current;
  const text = job && job.status === "running"
    ? remaining(job.estimatedCompletionAt, job.etaOverdue) : "";
  setText($("eta"), text ? `· ${text}` : "");
}

// One list item per child id, made once and updated in place, so bars move smoothly.
const childItems = new Map();

function childItem(id) {
  let item = childItems.get(id);
  if (item) return item;
  item = make("li", "child");
  const name = make("a", "name");
  name.id = `child-name-${childItems.size}`;
  const bar = makeBar(true);
  bar.setAttribute("aria-labelledby", name.id);
  item.append(name, bar, make("span", "pct"));
  childItems.set(id, item);
  return item;
}

function renderChildren(children) {
  const items = children.map((child) => {
    const item = childItem(String(child.id));
    const [name, bar, pct] = item.children;
    setText(name, child.title || child.jobType || child.id);
    name.href = encodeURIComponent(String(child.id)) + location.hash;
    const value = setBar(bar, child.progress, child.status);
    setText(pct, child.status === "failed" ? "failed" : value + "%");
    return item;
  });
  $("child-list").replaceChildren(...items);
  $("children").hidden = items.length === 0;
}

async function loadChildren(root, jobId, key) {
  const result = await call(`${root}/jobs/${encodeURIComponent(jobId)}/children?limit=100`, key);
  if (result.status === 200 && result.body && Array.isArray(result.body.children)) {
    renderChildren(result.body.children);
  }
}

async function follow() {
  const { prefix, jobId, key } = readLocation();
  if (!jobId) {
    say("This is not a job's address.", true);
    return;
  }
  if (!key) {
    say("This link has no key: open the link you were given (it ends in #key=…).", true);
    return;
  }
  const root = apiRoot(prefix);
  const wait = await longPollSeconds(root);
  const jobUrl = `${root}/jobs/${encodeURIComponent(jobId)}`;
  let etag = null;
  let quiet = 0;
  let failures = 0;
  setInterval(renderEta, 1000);
  for (;;) {
    const longPoll = wait > 0 && etag !== null;
    const began = Date.now();
    const result = await call(longPoll ? `${jobUrl}?wait=${wait}` : jobUrl, key,
                              { etag, timeoutSeconds: longPoll ? wait + 15 : 30 });
    let delay = document.hidden ? HIDDEN_POLL_MS : POLL_MS;
    if (result.status === 200 && result.body) {
      failures = 0;
      quiet = 0;
      etag = result.etag;
      say("");
      render(result.body);
      if (result.body.children) await loadChildren(root, jobId, key);
      if (TERMINAL.has(result.body.status)) return;
      if (wait > 0) delay = 0;
    } else if (result.status === 304) {
      failures = 0;
      quiet += 1;
      if (current && current.children && quiet % CHILDREN_EVERY === 0) {
        await loadChildren(root, jobId, key);
      }
      if (longPoll) delay = 0;
    } else if ([401, 403, 404].includes(result.status)) {
      say(problem(result), true);
      return;
    } else {
      failures += 1;
      say(problem(result), true);
      delay = result.retryAfter ? result.retryAfter * 1000
        : Math.min(30000, POLL_MS * 2 ** Math.min(failures, 5));
    }
    // A long poll that answers at once, again and again, must not become a busy loop.
    if (delay === 0 && Date.now() - began < 200) delay = POLL_MS;
    if (delay > 0) await pause(delay);
  }
}

// A new key (or token) typed into the fragment is a new page: read it from the start.
window.addEventListener("hashchange", () => location.reload());
follow();
