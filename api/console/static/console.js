/* Kefu console: the little the pages need beyond HTML forms. No third-party code, no inline script. */
"use strict";

/* Publish progress: an element with data-poll="<url>" is refreshed from that JSON until the build ends
   and, once ready, until the version is active and loaded here or shown as ready but not active (then
   its activate form, data-activate, is offered). Waiting for a load stops after a minute: a model that
   is not preloaded loads on the shop's next message. */
function pollBuild(el) {
  const url = el.dataset.poll;
  const bar = el.querySelector("progress");
  const status = el.querySelector("[data-status]");
  const stage = el.querySelector("[data-stage]");
  const done = el.querySelector("[data-done]");
  const activate = el.querySelector("[data-activate]");
  let waits = 120;
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
    status.dataset.state = data.state || data.status;
    if (stage) { stage.textContent = data.stage_text || ""; }
    if (bar) { bar.value = Math.round((data.fraction || 0) * 100); }
    if (data.status === "building") {
      setTimeout(tick, 500);
      return;
    }
    if (bar) { bar.value = data.status === "ready" ? 100 : bar.value; }
    if (done) { done.hidden = false; done.textContent = data.message || ""; }
    if (activate) { activate.hidden = data.state !== "inactive"; }
    if (data.pending && waits-- > 0) {
      setTimeout(tick, 500);
    } else {
      el.setAttribute("aria-busy", "false");
    }
  }
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(pollBuild);
});
