/* Kefu console: the little the pages need beyond HTML forms. No third-party code, no inline script. */
"use strict";

/* Publish progress: an element with data-poll="<url>" is refreshed from that JSON until the build ends. */
function pollBuild(el) {
  const url = el.dataset.poll;
  const bar = el.querySelector("progress");
  const status = el.querySelector("[data-status]");
  const stage = el.querySelector("[data-stage]");
  const done = el.querySelector("[data-done]");
  async function tick() {
    let data;
    try {
      const r = await fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" });
      if (!r.ok) { status.textContent = r.status; return; }
      data = await r.json();
    } catch (e) {
      setTimeout(tick, 1000);
      return;
    }
    status.textContent = data.status_text;
    status.dataset.statusValue = data.status;
    if (stage) { stage.textContent = data.stage_text || ""; }
    if (bar) { bar.value = Math.round((data.fraction || 0) * 100); }
    if (data.status === "building") {
      setTimeout(tick, 500);
    } else {
      if (bar) { bar.value = data.status === "ready" ? 100 : bar.value; }
      if (done) { done.hidden = false; done.textContent = data.message || ""; }
      el.setAttribute("aria-busy", "false");
    }
  }
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(pollBuild);
});
