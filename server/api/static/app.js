/* The playground: a chat that streams /v1/chat/completions with the denoise events and replays the
 * canvas step by step (canvas.js), keeping text deltas in order with the frames. Per answer it shows NFE,
 * TPF (tokens per forward) and tokens/s. Keyboard: Enter sends, Shift+Enter is a new line, Esc stops. */
"use strict";
(function (ns) {
  const $ = (id) => document.getElementById(id);
  const PACE_MS = { realtime: 0, smooth: 60, slow: 250 };
  const state = { history: [], controller: null, model: null };
  let canvas, player;

  function field(id) {
    const el = $(id);
    const value = el.value.trim();
    if (value === "") return undefined;
    return el.type === "number" ? Number(value) : value;
  }

  function requestBody() {
    const body = {
      messages: state.history.slice(), stream: true, stream_options: { include_usage: true, denoise: true },
      max_completion_tokens: field("max-tokens"), temperature: field("temperature"), steps: field("steps"),
      block_length: field("block-length"), threshold: field("threshold"), cache: field("cache"),
      remasking: field("remasking"), preset: field("preset"), model: state.model || undefined,
    };
    Object.keys(body).forEach((k) => body[k] === undefined && delete body[k]);
    return body;
  }

  function authHeaders() {
    const key = $("api-key").value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  /** Replays queued items: every "frame" waits its turn (the pace setting, faster when far behind);
   *  text deltas and other items are applied as soon as the frames before them have been shown. */
  function Player(apply) {
    const queue = [];
    let timer = null, idle = [];
    function delay() {
      const base = PACE_MS[$("pace").value] ?? PACE_MS.smooth;
      return queue.length > 20 ? (base * 20) / queue.length : base;
    }
    function tick() {
      timer = null;
      while (queue.length) {
        const item = queue.shift();
        apply(item);
        if (item.kind === "frame") break;
      }
      if (queue.length) timer = setTimeout(tick, delay());
      else idle.splice(0).forEach((resolve) => resolve());
    }
    return {
      push(item) { queue.push(item); if (!timer) timer = setTimeout(tick, 0); },
      drained() { return new Promise((resolve) => (queue.length || timer ? idle.push(resolve) : resolve())); },
      clear() { queue.length = 0; clearTimeout(timer); timer = null; idle.splice(0).forEach((r) => r()); },
    };
  }

  function addMessage(role, text) {
    const item = document.createElement("li");
    item.className = "msg " + role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Model";
    const body = document.createElement("p");
    body.className = "text";
    body.textContent = text;
    const meta = document.createElement("p");
    meta.className = "meta";
    item.append(who, body, meta);
    $("log").appendChild(item);
    item.scrollIntoView({ block: "nearest" });
    return { item, body, meta };
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
    $("log").setAttribute("aria-busy", String(busy));
  }

  function status(text) { $("status").textContent = text; }

  function summarize(run) {
    const u = run.usage || {}, f = run.lastFrame || {};
    const tokens = u.completion_tokens ?? null;
    const seconds = run.lastChunk ? (run.lastChunk - run.t0) / 1000 : null;
    return {
      nfe: u.nfe ?? f.nfe ?? null, tpf: u.tokens_per_forward ?? f.tpf ?? null, tokens,
      tps: tokens && seconds ? tokens / seconds : null, seconds,
      ttft: run.firstChunk ? (run.firstChunk - run.t0) / 1000 : null, finish: run.finish,
    };
  }

  function showStats(s, meta) {
    const fmt = (v, d) => (v == null ? "–" : Number(v).toFixed(d));
    $("stat-nfe").textContent = fmt(s.nfe, 0);
    $("stat-tpf").textContent = fmt(s.tpf, 2);
    $("stat-tps").textContent = fmt(s.tps, 1);
    $("stat-tokens").textContent = fmt(s.tokens, 0);
    $("stat-time").textContent = s.seconds == null ? "–" : fmt(s.seconds, 2) + " s";
    meta.textContent = `NFE ${fmt(s.nfe, 0)} · TPF ${fmt(s.tpf, 2)} · ${fmt(s.tps, 1)} tokens/s · ` +
      `${fmt(s.tokens, 0)} tokens in ${fmt(s.seconds, 2)} s` + (s.finish ? ` · ${s.finish}` : "");
  }

  function onEvent(run, ev) {
    if (ev.event === "denoise") {
      const d = JSON.parse(ev.data).denoise;
      if (d && d.index === 0) { run.lastFrame = d; player.push({ kind: "frame", d }); }
      return;
    }
    if (ev.data === "[DONE]") return;
    const obj = JSON.parse(ev.data);
    if (obj.error) throw new Error(obj.error.message || "the server reported an error");
    if (obj.usage) run.usage = obj.usage;
    for (const choice of obj.choices || []) {
      const now = performance.now();
      run.firstChunk = run.firstChunk || now;
      run.lastChunk = now;
      const text = choice.delta ? choice.delta.content : choice.text;
      if (text) player.push({ kind: "delta", text });
      if (choice.finish_reason) run.finish = choice.finish_reason;
    }
  }

  async function send(text) {
    state.history.push({ role: "user", content: text });
    addMessage("user", text);
    const answer = addMessage("assistant", "");
    answer.item.classList.add("pending");
    const run = { t0: performance.now(), text: "" };
    player.clear();
    player = Player((item) => {
      if (item.kind === "frame") canvas.draw(item.d);
      else { run.text += item.text; answer.body.textContent = run.text; }
    });
    canvas.reset("waiting for the first step…");
    state.controller = new AbortController();
    setBusy(true);
    status("Generating…");
    try {
      await ns.postStream("v1/chat/completions", requestBody(), authHeaders(), state.controller.signal,
        (ev) => onEvent(run, ev));
      await player.drained();
      state.history.push({ role: "assistant", content: run.text });
      showStats(summarize(run), answer.meta);
      status("Answer ready.");
    } catch (err) {
      player.clear();
      state.history.pop();
      const stopped = err.name === "AbortError";
      answer.item.classList.add(stopped ? "stopped" : "error");
      answer.meta.textContent = stopped ? "Stopped." : "Error: " + err.message;
      status(stopped ? "Stopped." : "Error: " + err.message);
    } finally {
      answer.item.classList.remove("pending");
      state.controller = null;
      setBusy(false);
      $("prompt").focus();
    }
  }

  function submit(event) {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (state.controller || !text) return;
    if (!$("settings").reportValidity()) { status("Check the settings: one value is out of range."); return; }
    $("prompt").value = "";
    send(text);
  }

  async function discoverModel() {
    try {
      const resp = await fetch("v1/models", { headers: authHeaders() });
      if (resp.status === 401) { status("This server needs an API key: enter it under Settings."); return; }
      const data = await resp.json();
      state.model = data.data[0].id;
      $("model-name").textContent = state.model;
    } catch (err) {
      $("model-name").textContent = "unknown (server not reachable)";
    }
  }

  function init() {
    canvas = ns.CanvasView($("canvas"), $("canvas-caption"));
    player = Player(() => {});
    canvas.reset("The canvas appears here while an answer is denoised.");
    $("chat-form").addEventListener("submit", submit);
    $("prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("chat-form").requestSubmit(); }
    });
    document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.controller) state.controller.abort(); });
    $("stop").addEventListener("click", () => state.controller && state.controller.abort());
    $("clear").addEventListener("click", () => {
      if (state.controller) state.controller.abort();
      state.history = [];
      $("log").replaceChildren();
      canvas.reset("New chat.");
      status("New chat started.");
      $("prompt").focus();
    });
    $("api-key").addEventListener("change", discoverModel);
    setBusy(false);
    discoverModel();
  }

  ns.Player = Player;
  document.addEventListener("DOMContentLoaded", init);
})(window.Unmask = window.Unmask || {});
