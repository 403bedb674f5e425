/* The denoising canvas: one cell per generation position, grouped into outlined blocks.
 * Masked cells are grey, cells committed by the latest step flash, the block being denoised is outlined
 * in the accent colour, and positions past max_tokens (the canvas is rounded up to whole blocks) are dim.
 * Once the answer has finished (end of text), positions left masked are shown as unused dots. */
"use strict";
(function (ns) {
  const SPECIAL = /^<\|?\/?([^<>|]+)\|?>$/;

  /** What a committed token looks like in its cell: visible whitespace, short special-token names. */
  function tokenFace(text) {
    const special = SPECIAL.exec(text);
    if (special) return { text: special[1].replace(/_id$/, "").replace(/^endoftext$/, "eos").toUpperCase(), cls: "special" };
    const shown = text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "\u00a0");
    return { text: shown || "∅", cls: "" };
  }

  function blockState(lo, d, finished) {
    if (finished || lo < d.block[0]) return "done";
    return lo === d.block[0] ? "current" : "pending";
  }

  function CanvasView(root, caption) {
    let previous = null;

    function cell(d, i, masked) {
      const el = document.createElement("span");
      el.className = "cell";
      if (i >= d.length) el.classList.add("beyond");
      if (masked.has(i)) {
        el.classList.add(d.finished ? "unused" : "masked");
        el.textContent = d.finished ? "·" : "░";
        return el;
      }
      const face = tokenFace(d.tokens[i] == null ? "" : d.tokens[i]);
      el.textContent = face.text;
      if (face.cls) el.classList.add(face.cls);
      if (previous && previous.masked.has(i)) el.classList.add("new");
      return el;
    }

    function draw(d) {
      const masked = new Set(d.masked);
      const finished = Boolean(d.finished) || masked.size === 0;
      const width = Math.max(1, d.block[1] - d.block[0]);
      const frag = document.createDocumentFragment();
      for (let lo = 0; lo < d.token_ids.length; lo += width) {
        const block = document.createElement("div");
        block.className = "block " + blockState(lo, d, finished);
        for (let i = lo; i < Math.min(lo + width, d.token_ids.length); i++) block.appendChild(cell(d, i, masked));
        frag.appendChild(block);
      }
      root.replaceChildren(frag);
      previous = { masked };
      const total = Math.min(d.length, d.token_ids.length);
      const open = d.finished ? 0 : d.masked.filter((i) => i < d.length).length;
      root.dataset.step = String(d.step);
      root.dataset.masked = String(open);
      root.setAttribute("aria-label", `Denoising canvas, step ${d.step}: ${open} of ${total} positions still masked`);
      caption.textContent = `step ${d.step} · ${open}/${total} masked · block ${d.block[0]}–${d.block[1] - 1} · ` +
        `NFE ${d.nfe} · TPF ${Number(d.tpf).toFixed(2)}`;
    }

    function reset(message) {
      previous = null;
      root.replaceChildren();
      delete root.dataset.step;
      delete root.dataset.masked;
      root.setAttribute("aria-label", "Denoising canvas (empty)");
      caption.textContent = message || "";
    }

    return { draw, reset };
  }

  ns.CanvasView = CanvasView;
  ns.tokenFace = tokenFace;
})(window.Unmask = window.Unmask || {});
