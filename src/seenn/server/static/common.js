// Shared by the job page and the operator view. Every field shown is user data: it is
// only ever put into the page as text (textContent), never parsed as HTML.

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/** The API root (".../v1") of the server this page came from, wherever it is mounted. */
export function apiRoot(pagePrefix) {
  return pagePrefix.replace(/\/+$/, "") + "/v1";
}

/** Set an element's text (or hide its row when empty). */
export function setText(node, text) {
  node.textContent = text == null ? "" : String(text);
}

/** A new element with a class and a text. */
export function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = String(text);
  return node;
}

/** A progress bar: role=progressbar with aria-valuenow, labelled by its caller. */
export function makeBar(small) {
  const bar = make("div", small ? "bar small" : "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.appendChild(make("div", "fill"));
  return bar;
}

/** Show a progress (clamped to 0-100) and a status on a bar. */
export function setBar(bar, progress, status) {
  let value = Number(progress);
  if (!Number.isFinite(value)) value = 0;
  value = Math.max(0, Math.min(100, Math.round(value)));
  bar.setAttribute("aria-valuenow", String(value));
  bar.setAttribute("aria-valuetext", `${value}%${status ? ", " + status : ""}`);
  // CSSOM, not a style attribute: the Content-Security-Policy allows no inline styles.
  bar.firstElementChild.style.width = value + "%";
  bar.classList.remove("completed", "failed", "cancelled");
  if (TERMINAL.has(status)) bar.classList.add(status);
  return value;
}

/** "about 3 min left" from an ISO time, or "" when there is none. */
export function remaining(isoTime, overdue, now = Date.now()) {
  if (!isoTime) return "";
  const when = Date.parse(isoTime);
  if (!Number.isFinite(when)) return "";
  const seconds = Math.round((when - now) / 1000);
  if (overdue) return "taking longer than usual";
  if (seconds < 5) return "a few seconds left";
  if (seconds < 60) return `about ${seconds} s left`;
  if (seconds < 3600) return `about ${Math.round(seconds / 60)} min left`;
  return `about ${(seconds / 3600).toFixed(1)} h left`;
}

/** A time for people: local clock time, or the raw text if it is not a date. */
export function when(isoTime) {
  const parsed = Date.parse(isoTime);
  return Number.isFinite(parsed) ? new Date(parsed).toLocaleString() : String(isoTime ?? "");
}

/** Only http(s) links are links; anything else (javascript:, data:) is shown as text. */
export function safeUrl(text) {
  if (typeof text !== "string") return null;
  try {
    const url = new URL(text, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/**
 * One API call with the key in the Authorization header (never in the URL).
 * Resolves to {status, etag, body, retryAfter}; network failures resolve to status 0.
 */
export async function call(url, key, { etag, timeoutSeconds = 30 } = {}) {
  const headers = { Authorization: "Bearer " + key, Accept: "application/json" };
  if (etag) headers["If-None-Match"] = etag;
  // A connection that silently died must not stop the page for good.
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutSeconds * 1000);
  let response;
  let body = null;
  try {
    response = await fetch(url, { headers, signal: controller.signal, cache: "no-store",
                                  credentials: "omit", referrerPolicy: "no-referrer" });
    if (response.status !== 304) {
      try { body = await response.json(); } catch { body = null; }
    }
  } catch {
    return { status: 0, etag: null, body: null, retryAfter: null };
  } finally {
    clearTimeout(timer);
  }
  return { status: response.status, etag: response.headers.get("ETag"), body,
           retryAfter: Number(response.headers.get("Retry-After")) || null };
}

/** The seconds of long poll the server offers (GET /v1/healthz "extensions.wait"), or 0. */
export async function longPollSeconds(root) {
  try {
    const response = await fetch(root + "/healthz", { cache: "no-store", credentials: "omit" });
    const body = await response.json();
    const wait = body && body.extensions && body.extensions.wait;
    const max = wait && Number(wait.maxSeconds);
    return Number.isFinite(max) && max > 0 ? Math.min(25, Math.floor(max)) : 0;
  } catch {
    return 0;
  }
}

/** Resolves after ms milliseconds. */
export function pause(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** What an error answer says, for people. */
export function problem(result) {
  if (result.status === 0) return "The server cannot be reached; trying again…";
  if (result.status === 401) return "This link's key is not valid (or has expired).";
  if (result.status === 403) return "This key may not read this.";
  if (result.status === 404) return "No such job (it may have expired).";
  const error = result.body && result.body.error;
  return error && error.message ? `Error: ${error.message}` : `Error ${result.status}`;
}
