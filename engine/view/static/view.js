// Drillyard viewer: live updates. The page's own URL with ?live=1 answers a
// small JSON object from the same server-side builder as the page: `fields`
// (text for every [data-live] element, set with textContent, never as HTML),
// `sections` (tables re-rendered whole by the server, escaped like the page),
// `shape` (when it differs from the page's, the page reloads), `rev` (charts
// reload when it changes), and on a rollout page `tail_html`, new messages
// rendered and escaped by the server. It asks again after `every` ms, and
// stops when `live` is false.
"use strict";
(() => {
  const body = document.body;
  if (body.dataset.poll !== "1") return;
  const INTERVAL = 1500;
  const shape = body.dataset.shape;
  let tail = body.dataset.tail;
  const messages = document.getElementById("messages");

  async function tick() {
    const url = new URL(window.location.href);
    url.searchParams.set("live", "1");
    if (tail !== undefined) url.searchParams.set("tail", tail);
    let data;
    try {
      const resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      data = await resp.json();
    } catch (err) {
      body.dataset.liveError = String(err);
      window.setTimeout(tick, INTERVAL * 4);
      return;
    }
    if (data.shape !== shape) {
      window.location.reload();
      return;
    }
    for (const el of document.querySelectorAll("[data-live]")) {
      const value = data.fields[el.dataset.live];
      if (typeof value === "string" && el.textContent !== value) el.textContent = value;
    }
    for (const img of document.querySelectorAll("img[data-rev]")) {
      if (img.dataset.rev !== data.rev) {
        img.dataset.rev = data.rev;
        const src = new URL(img.src);
        src.searchParams.set("v", data.rev);
        img.src = src.toString();
      }
    }
    for (const [name, html] of Object.entries(data.sections || {})) {
      const el = document.querySelector(`[data-section="${name}"]`);
      if (el && el.dataset.html !== html) {
        el.dataset.html = html;
        el.innerHTML = html;  // rendered and escaped by the server, like the page itself
      }
    }
    if (messages && data.tail_html) messages.insertAdjacentHTML("beforeend", data.tail_html);
    if (data.tail !== undefined && data.tail !== null) tail = String(data.tail);
    body.dataset.polls = String(Number(body.dataset.polls || "0") + 1);
    if (data.live) window.setTimeout(tick, data.every || INTERVAL);
    else body.dataset.poll = "done";
  }
  window.setTimeout(tick, INTERVAL);
})();
