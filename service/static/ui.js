// Submit a report or an email job, then follow it live until it ends.
//
// Every request carries `Authorization: Bearer <token>` when a token is stored,
// so the event stream is read with fetch() (EventSource cannot send headers and
// would need the token in the URL). Everything shown is set as text, never as HTML.
"use strict";

const TOKEN_KEY = "jobservice.token";
const ENDED = new Set(["finished", "failed", "stopped", "canceled"]);
const $ = (id) => document.getElementById(id);

let lastReport = null; // {job, name} of the last finished report, to attach to an email
let following = null; // AbortController of the job being followed

function authHeaders(extra = {}) {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

function show(element, visible) {
  element.hidden = !visible;
}

function kind() {
  return document.querySelector("input[name=kind]:checked").value;
}

function requestBody() {
  if (kind() === "report") {
    return {
      job: "reports.generate",
      kwargs: {
        title: $("report-title").value,
        format: $("report-format").value,
        generated: Number($("report-rows").value),
        steps: Number($("report-steps").value),
        pause: Number($("report-pause").value || 0),
      },
    };
  }
  const to = $("email-to").value.split(",").map((s) => s.trim()).filter(Boolean);
  const kwargs = { to, subject: $("email-subject").value, text: $("email-text").value };
  if ($("email-attach").checked && lastReport) kwargs.attachments = [lastReport];
  return { job: "email.send", kwargs };
}

function problemText(problem, fallback) {
  const lines = [problem.detail || problem.title || fallback];
  for (const error of problem.errors || []) {
    lines.push(`• ${error.argument || error.field}: ${error.problem}`);
  }
  return lines.join("\n");
}

async function submit(event) {
  event.preventDefault();
  if (following) following.abort();
  $("submit").disabled = true;
  resetJob();
  try {
    const response = await fetch("/jobs", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(requestBody()),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      showError(problemText(data, `${response.status} ${response.statusText}`));
      return;
    }
    render(data);
    follow(data.id);
  } catch (error) {
    showError(`Could not reach the service: ${error}`);
  } finally {
    $("submit").disabled = false;
  }
}

function resetJob() {
  show($("job"), true);
  show($("error"), false);
  show($("outcome"), false);
  show($("download"), false);
  $("job-id").textContent = "";
  $("job-status").textContent = "submitting…";
  $("job-note").textContent = "";
  $("progress-text").textContent = "";
  $("bar").className = "bar";
  setBar(0);
}

function showError(text) {
  show($("job"), true);
  $("error").textContent = text;
  show($("error"), true);
}

function setBar(percent) {
  const value = Math.max(0, Math.min(100, Math.round(percent * 10) / 10));
  $("bar").setAttribute("aria-valuenow", String(value));
  $("bar-fill").style.width = `${value}%`;
}

function renderProgress(progress) {
  if (!progress) return;
  if (progress.percent !== null && progress.percent !== undefined) setBar(progress.percent);
  const percent = progress.percent === null || progress.percent === undefined ? "" : `${progress.percent}% · `;
  $("progress-text").textContent = percent + (progress.message || "");
}

function render(job) {
  $("job-id").textContent = job.id;
  $("job-status").textContent = job.status;
  renderProgress(job.progress);
  const failures = (job.history || []).filter((attempt) => attempt.outcome === "retried");
  if (job.status === "scheduled" && failures.length) {
    const last = failures[failures.length - 1].error || {};
    $("job-note").textContent = `attempt ${failures.length} failed (${last.type}: ${last.message}); retrying at ${job.scheduled_for}`;
  } else if (job.status === "rate_limited") {
    $("job-note").textContent = "waiting for a free slot";
  } else {
    $("job-note").textContent = "";
  }
  if (!ENDED.has(job.status)) return;
  $("bar").className = `bar ${job.status === "finished" ? "finished" : "failed"}`;
  if (job.status === "finished") {
    setBar(100);
    renderResult(job);
  } else if (job.error) {
    showError(`${job.error.type}: ${job.error.message}`);
  } else {
    showError(`The job ended as ${job.status}.`);
  }
}

function renderResult(job) {
  const result = job.result || {};
  if (result.artifact) {
    const link = $("download");
    link.href = result.artifact.url;
    link.setAttribute("download", result.artifact.name);
    link.textContent = `Download ${result.artifact.name} (${Math.ceil(result.artifact.bytes / 1024)} kB)`;
    show(link, true);
    lastReport = { job: job.id, name: result.artifact.name };
    $("email-attach").disabled = false;
    $("email-attach-name").textContent = `(${result.artifact.name} of ${job.id.slice(0, 8)}…)`;
  } else if (result.message_id) {
    const where = result.outbox ? `written to the outbox: ${result.outbox}` : `sent via ${result.via}`;
    $("outcome").textContent = `Email ${result.message_id} ${where}.`;
    show($("outcome"), true);
  }
}

// Follow a job's Server-Sent Events; fall back to long polls if the stream breaks.
async function follow(id) {
  const controller = new AbortController();
  following = controller;
  let view = null;
  try {
    view = await stream(id, controller.signal);
  } catch (error) {
    if (controller.signal.aborted) return;
  }
  while (!controller.signal.aborted && !(view && ENDED.has(view.status))) {
    try {
      const response = await fetch(`/jobs/${encodeURIComponent(id)}?wait=25`, {
        headers: authHeaders(),
        signal: controller.signal,
      });
      if (!response.ok) {
        showError(problemText(await response.json().catch(() => ({})), `${response.status}`));
        return;
      }
      view = await response.json();
      render(view);
    } catch (error) {
      if (controller.signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

async function stream(id, signal) {
  const response = await fetch(`/jobs/${encodeURIComponent(id)}/events`, {
    headers: authHeaders({ Accept: "text/event-stream" }),
    signal,
  });
  if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let view = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return view;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue; // a keep-alive comment
      const payload = JSON.parse(data.join("\n"));
      if (name === "status") {
        view = payload;
        render(view);
      } else if (name === "progress") {
        renderProgress(payload);
      }
    }
  }
}

// With a token, a plain link cannot send it: fetch the file and hand it over.
async function download(event) {
  if (!localStorage.getItem(TOKEN_KEY)) return;
  event.preventDefault();
  const link = event.currentTarget;
  const response = await fetch(link.href, { headers: authHeaders() });
  if (!response.ok) {
    showError(problemText(await response.json().catch(() => ({})), `${response.status}`));
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const temporary = document.createElement("a");
  temporary.href = url;
  temporary.download = link.getAttribute("download") || "artifact";
  temporary.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function switchKind() {
  show($("report-fields"), kind() === "report");
  show($("email-fields"), kind() === "email");
  $("email-to").required = kind() === "email";
}

document.addEventListener("DOMContentLoaded", () => {
  $("submit-form").addEventListener("submit", submit);
  for (const radio of document.querySelectorAll("input[name=kind]")) radio.addEventListener("change", switchKind);
  $("download").addEventListener("click", download);
  $("token").value = localStorage.getItem(TOKEN_KEY) || "";
  $("token").addEventListener("change", () => {
    const token = $("token").value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  });
  $("forget-token").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
  });
  switchKind();
});
