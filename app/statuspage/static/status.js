// vmbackup status page. The server renders every table (/ui/fragments/...); this
// script only fetches them with the operator's token, follows /v1/events to move
// the progress of running backups, and fetches the fragment again when a backup
// changes status. EventSource cannot send an Authorization header, so the stream
// is read with fetch. Formatting matches app/statuspage/display.py.
"use strict";

const TOKEN_KEY = "vmbackup.token";
const RETRY_MS = 2000;
const RELOAD_DEBOUNCE_MS = 250;
const AGES_EVERY_MS = 10000;
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

const content = document.getElementById("content");
const tokenForm = document.getElementById("token-form");
const forgetButton = document.getElementById("forget-token");
const errorLine = document.getElementById("error");
const liveBadge = document.getElementById("live");

let following = false;
let lastEventId = null;
let reloadTimer = null;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(extra) {
  const found = token();
  const all = Object.assign({}, extra || {});
  if (found) all.Authorization = "Bearer " + found;
  return all;
}

function showError(message) {
  errorLine.textContent = message || "";
  errorLine.hidden = !message;
}

function askForToken(reason) {
  document.getElementById("token-reason").textContent = reason;
  tokenForm.hidden = false;
  document.getElementById("token").focus();
}

async function problemOf(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || response.statusText;
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

// -- formatting (as display.py) --------------------------------------------

function size(value) {
  if (value === null || value === undefined) return "-";
  let amount = value;
  let unit = 0;
  while (amount >= 1024 && unit < UNITS.length - 1) {
    amount /= 1024;
    unit += 1;
  }
  return unit === 0 ? value + " B" : amount.toFixed(1) + " " + UNITS[unit];
}

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return s + " s";
  const minutes = Math.floor(s / 60);
  const hours = Math.floor(s / 3600);
  const days = Math.floor(s / 86400);
  if (hours === 0) return minutes + " min";
  if (days === 0) return hours + " h " + (minutes % 60) + " min";
  return days + " d " + (hours % 24) + " h";
}

function refreshAges() {
  const now = Date.now();
  for (const element of content.querySelectorAll("time.ago")) {
    const at = Date.parse(element.getAttribute("datetime"));
    if (!Number.isNaN(at)) element.textContent = duration((now - at) / 1000) + " ago";
  }
}

function progressOf(status, p) {
  // A ready pull export copies nothing itself: its scratch fills as the guest writes.
  if (status === "ready" && p.temp_total) {
    return { done: p.temp_used || 0, total: p.temp_total, what: "scratch used" };
  }
  if (p.bytes_total) return { done: p.bytes_processed || 0, total: p.bytes_total, what: "copied" };
  return null;
}

// -- fragments ----------------------------------------------------------------

async function load() {
  let response;
  try {
    response = await fetch(content.dataset.fragment, { headers: headers(), cache: "no-store" });
  } catch (error) {
    showError("The service does not answer: " + error.message);
    return false;
  }
  if (response.status === 401) {
    askForToken(await problemOf(response));
    return false;
  }
  if (!response.ok) {
    showError(await problemOf(response));
    return false;
  }
  content.innerHTML = await response.text();
  showError("");
  tokenForm.hidden = true;
  forgetButton.hidden = !token();
  refreshAges();
  const fragment = content.querySelector("[data-last-event-id]");
  if (lastEventId === null && fragment) lastEventId = fragment.dataset.lastEventId;
  return true;
}

function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(load, RELOAD_DEBOUNCE_MS);
}

// -- the event stream ---------------------------------------------------------

function apply(kind, event) {
  const row = content.querySelector('tr.backup[data-backup-id="' + event.backup_id + '"]');
  if (kind === "progress") {
    if (row && event.progress) showProgress(row, event.status, event.progress);
    return;
  }
  if (row) {
    const badge = row.querySelector(".backup-status .status");
    badge.textContent = event.status;
    badge.className = "status status-" + event.status;
  }
  reloadSoon(); // a new backup, or one that moved on: the server renders where it now belongs
}

function showProgress(row, status, p) {
  const found = progressOf(status, p);
  if (!found) return;
  const percent = found.total ? Math.min(100, Math.floor((found.done * 100) / found.total)) : 0;
  row.querySelector("progress").value = percent;
  row.querySelector(".progress-text").textContent =
    found.what + " " + size(found.done) + " of " + size(found.total) + " (" + percent + "%)";
}

function dispatch(block) {
  let kind = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a keepalive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") kind = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (id !== null) lastEventId = id;
  if (data.length) apply(kind, JSON.parse(data.join("\n")));
}

async function readStream(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      dispatch(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
  }
}

async function follow() {
  following = true;
  for (;;) {
    const extra = { Accept: "text/event-stream" };
    if (lastEventId) extra["Last-Event-ID"] = lastEventId; // resume: nothing is missed
    try {
      const response = await fetch(content.dataset.events, { headers: headers(extra) });
      if (response.status === 401) {
        liveBadge.textContent = "offline";
        following = false;
        askForToken(await problemOf(response));
        return;
      }
      if (response.ok) {
        liveBadge.textContent = "live";
        liveBadge.classList.add("on");
        await readStream(response);
      }
    } catch (_) {
      // the service restarted or the network dropped: retry below
    }
    liveBadge.textContent = "reconnecting";
    liveBadge.classList.remove("on");
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    await load(); // what changed while the stream was down
  }
}

async function start() {
  if ((await load()) && !following) follow();
}

tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  start();
});

forgetButton.addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

setInterval(refreshAges, AGES_EVERY_MS);
start();
