/* Server-sent events over fetch(): POST a JSON body, yield {event, data} objects as they arrive.
 * EventSource cannot POST, so the stream is read with a ReadableStream reader and split by the
 * WHATWG rules we need: "field: value" lines, a blank line ends an event, ":" starts a comment. */
"use strict";
(function (ns) {
  /** Feed decoded text; call onEvent({event, data}) for every complete event. */
  function EventParser(onEvent) {
    let buffer = "", name = null, data = [];
    function line(text) {
      if (text === "") {
        if (data.length || name !== null) onEvent({ event: name, data: data.join("\n") });
        name = null; data = [];
        return;
      }
      if (text[0] === ":") return;
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") name = value;
    }
    return {
      push(chunk) {
        buffer += chunk;
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        lines.forEach(line);
      },
      end() { if (buffer) line(buffer); line(""); buffer = ""; },
    };
  }

  /** POST `body` to `url`; onEvent per SSE event. Rejects with an Error carrying the OpenAI message
   *  when the answer is not 200. */
  async function postStream(url, body, headers, signal, onEvent) {
    const resp = await fetch(url, {
      method: "POST", signal, body: JSON.stringify(body),
      headers: Object.assign({ "Content-Type": "application/json", Accept: "text/event-stream" }, headers),
    });
    if (!resp.ok) {
      let message = resp.status + " " + resp.statusText;
      try { message = (await resp.json()).error.message || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    const parser = EventParser(onEvent);
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(decoder.decode(value, { stream: true }));
    }
    parser.push(decoder.decode());
    parser.end();
  }

  ns.EventParser = EventParser;
  ns.postStream = postStream;
})(window.Unmask = window.Unmask || {});
