// es-rerank comparison page. Every text that comes from the cluster or a document is put into
// the page with textContent (never innerHTML), so a document's HTML is shown, never run.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const COMPARE = "/_es_rerank/ui/compare";

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function authHeaders() {
  const key = $("#apikey").value.trim();
  if (key) return { Authorization: "ApiKey " + key };
  const user = $("#user").value;
  if (user) {
    const bytes = new TextEncoder().encode(user + ":" + $("#password").value);
    let bin = "";
    bytes.forEach((b) => { bin += String.fromCharCode(b); });
    return { Authorization: "Basic " + btoa(bin) };
  }
  return {};  // the browser's own credentials for this origin, if any
}

function fmt(x, digits = 4) {
  return x === null || x === undefined ? "—" : Number(x).toFixed(digits);
}

function ms(x) {
  return x === null || x === undefined ? "—" : `${Number(x).toFixed(0)} ms`;
}

function reason(body, status) {
  // the cluster's (or es-rerank's) error JSON: {"error": {"type", "reason", ...}, "status"}
  const e = body && body.error;
  if (e && typeof e === "object") {
    const type = e.type ? `${e.type}: ` : "";
    return `${status} ${type}${e.reason || JSON.stringify(e)}`;
  }
  if (typeof e === "string") return `${status} ${e}`;
  return `${status} ${JSON.stringify(body)}`;
}

function sideSettings(n) {
  const box = $(n === 0 ? "#side-a" : "#side-b");
  return {
    reranker: box.querySelector("[name=reranker]").value,
    blend: box.querySelector("[name=blend]").value,
    blend_weight: Number(box.querySelector("[name=blend_weight]").value),
  };
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function applyMode() {
  const left = $("#side-a");
  const fixed = mode() === "rerank";
  left.disabled = fixed;
  if (fixed) left.querySelector("[name=reranker]").value = "none";
  left.querySelector("legend").textContent = fixed ? "Left: hybrid (no reranking)" : "Left";
}

function moveMark(hit, finalK) {
  const other = hit.other_rank;
  if (other === null || other === undefined) return { cls: "new", text: "new", title: "not among the other side's candidates" };
  if (other > finalK) return { cls: "new", text: `new (${other})`, title: `rank ${other} on the other side` };
  const d = other - hit.rank;
  if (d > 0) return { cls: "up", text: `↑${d}`, title: `rank ${other} on the other side` };
  if (d < 0) return { cls: "down", text: `↓${-d}`, title: `rank ${other} on the other side` };
  return { cls: "same", text: "=", title: "same rank on the other side" };
}

function renderHit(hit, finalK) {
  const li = el("li", "hit");
  li.dataset.doc = hit.doc_id;
  li.dataset.rank = hit.rank;
  li.dataset.otherRank = hit.other_rank === null ? "" : hit.other_rank;
  const mark = moveMark(hit, finalK);
  li.dataset.move = mark.cls;
  if (hit.relevance !== null && hit.relevance > 0) li.classList.add("relevant");
  const head = el("div", "head");
  head.append(el("span", "rank", `#${hit.rank}`));
  const m = el("span", `move ${mark.cls}`, mark.text);
  m.title = mark.title;
  head.append(m);
  if (hit.relevance !== null) {
    head.append(el("span", hit.relevance > 0 ? "rel yes" : "rel no",
      hit.relevance > 0 ? `✓ relevant (${hit.relevance})` : "not judged relevant"));
  }
  head.append(el("span", "title", hit.title || hit.doc_id));
  li.append(head);
  li.append(el("p", "passage", hit.text));
  const scores = el("p", "scores");
  scores.append(el("span", "doc", hit.doc_id));
  scores.append(el("span", "retrieval", `hybrid ${fmt(hit.retrieval_score)} (#${hit.retrieval_rank} chunk)`));
  if (hit.rerank_rank !== null) {
    scores.append(el("span", "rerank", `rerank ${fmt(hit.rerank_score)} (#${hit.rerank_rank} chunk)`));
  }
  if (hit.final_score !== null && hit.final_score !== hit.rerank_score) {
    scores.append(el("span", "blended", `blended ${fmt(hit.final_score)}`));
  }
  li.append(scores);
  return li;
}

function render(data) {
  const t = data.timings;
  const parts = [`${data.candidates} candidates`, `embed ${ms(t.embed_ms)}`,
    `retrieval ${ms(t.retrieval_ms)}${data.fusion ? ` (RRF ${data.fusion})` : ""}`];
  data.sides.forEach((s, i) => { if (s.reranker !== "none") parts.push(`${i ? "right" : "left"} rerank ${ms(s.rerank_ms)}`); });
  parts.push(`total ${ms(t.total_ms)}`);
  $("#timings").textContent = parts.join(" · ");
  data.sides.forEach((side, i) => {
    const col = $(`#col-${i}`);
    col.querySelector("h2").textContent = side.label + (side.reranked || side.reranker === "none" ? "" : " (not reranked)");
    const metric = col.querySelector(".metric");
    metric.textContent = "";
    if (data.judged) {
      metric.append(el("span", "ndcg", `nDCG@10 ${fmt(side.ndcg_at_10)}`));
      metric.append(el("span", "qid", ` · query ${data.qid} (${data.judgments})`));
    } else if (data.judgments) {
      metric.textContent = `query not judged in ${data.judgments}`;
    }
    if (side.error) metric.append(el("span", "side-error", ` · reranker failed: ${side.error}`));
    const list = col.querySelector("ol.hits");
    list.replaceChildren(...side.hits.map((h) => renderHit(h, data.final_k)));
  });
  $("#results").hidden = false;
}

function showError(text) {
  const box = $("#error");
  box.textContent = text;
  box.hidden = false;
}

async function search(event) {
  event.preventDefault();
  $("#error").hidden = true;
  document.body.dataset.state = "busy";
  $("#status").textContent = "searching…";
  $("#go").disabled = true;
  const body = {
    index: $("#index").value.trim(),
    query: $("#query").value,
    depth: Number($("#depth").value),
    final_k: Number($("#final_k").value),
    sides: [mode() === "rerank" ? { reranker: "none" } : sideSettings(0), sideSettings(1)],
  };
  const qid = $("#qid").value.trim();
  if (qid) body.qid = qid;
  try {
    const resp = await fetch(COMPARE, {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body), credentials: "same-origin",
    });
    let data;
    try { data = await resp.json(); } catch (e) { data = { error: await resp.text().catch(() => "") }; }
    if (!resp.ok) {
      $("#results").hidden = true;
      showError(reason(data, resp.status));
      $("#status").textContent = "";
      document.body.dataset.state = "error";
      return;
    }
    render(data);
    $("#status").textContent = "done";
    document.body.dataset.state = "done";
  } catch (e) {
    showError(`the server did not answer: ${e}`);
    $("#status").textContent = "";
    document.body.dataset.state = "error";
  } finally {
    $("#go").disabled = false;
  }
}

function highlight(event) {
  const li = event.target.closest("li.hit");
  document.querySelectorAll("li.hit.twin").forEach((x) => x.classList.remove("twin"));
  if (!li) return;
  document.querySelectorAll("li.hit").forEach((x) => { if (x.dataset.doc === li.dataset.doc) x.classList.add("twin"); });
}

async function getJson(url) {
  const resp = await fetch(url, { headers: authHeaders(), credentials: "same-origin" });
  if (!resp.ok) throw new Error(String(resp.status));
  return resp.json();
}

async function loadRerankers() {
  let ids = ["cross-encoder"];
  let fallback = "cross-encoder";
  try {
    const health = await getJson("/_es_rerank/health");
    ids = health.rerankers.available;
    fallback = health.rerankers.default || ids[0];
  } catch (e) { /* the cluster may be down: the defaults stand */ }
  document.querySelectorAll("select[name=reranker]").forEach((select, i) => {
    select.replaceChildren(el("option", null, "none"), ...ids.map((id) => el("option", null, id)));
    select.value = i === 0 ? "none" : fallback;
  });
  applyMode();
}

async function loadNames() {
  // indices and aliases the caller may list, as suggestions; the field takes any name
  try {
    const data = await getJson("/_es_rerank/ui/indices");
    $("#indices").replaceChildren(...data.names.map((n) => { const o = el("option"); o.value = n; return o; }));
  } catch (e) { /* not allowed or not reachable: no suggestions */ }
}

async function loadJudged() {
  try {
    const data = await getJson("/_es_rerank/ui/judged");
    if (!data.source) return;
    $("#qid-label").hidden = false;
    const texts = {};
    $("#judged").replaceChildren(...data.queries.map((q) => {
      const o = el("option");
      o.value = q.qid;
      if (q.text) { o.label = q.text; texts[q.qid] = q.text; }
      return o;
    }));
    $("#qid").addEventListener("change", () => {
      const text = texts[$("#qid").value.trim()];
      if (text) $("#query").value = text;
    });
  } catch (e) { /* refused: no judged queries offered */ }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#search").addEventListener("submit", search);
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", applyMode));
  $("#results").addEventListener("mouseover", highlight);
  for (const id of ["#user", "#password", "#apikey"]) $(id).addEventListener("change", () => { loadNames(); loadJudged(); });
  loadRerankers();
  loadNames();
  loadJudged();
});
