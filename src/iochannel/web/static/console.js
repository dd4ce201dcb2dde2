// The console page: an xterm.js terminal attached to the console's WebSocket.
// Wire protocol (see iochannel.web.protocol): the server sends terminal bytes;
// the page sends messages [0x00, len_hi, len_lo, ...input] and
// [0x01, rows_hi, rows_lo, cols_hi, cols_lo].  The server also says whether the
// device is there, as the private OSC "ESC ] 7761 ; device=open|gone BEL".
"use strict";

(() => {
  const MAX_INPUT = 0xffff;
  const body = document.body;
  const role = body.dataset.role;
  const readOnly = role !== "rw";
  const token = new URLSearchParams(location.search).get("token") || "";
  const status = document.getElementById("status");
  document.getElementById("role").textContent = readOnly ? "read-only" : "read-write";

  const term = new Terminal({ cursorBlink: !readOnly, disableStdin: readOnly, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();

  const STATUS_OSC = 7761;
  let socket = null;
  let retryMs = 500;
  let deviceOpen = true;

  function setStatus(text, state) {
    status.textContent = text;
    body.dataset.status = state;
  }

  function showConnected() {
    if (deviceOpen) setStatus("connected", "connected");
    else setStatus("connected, device gone: typing is dropped", "connected");
  }

  term.parser.registerOscHandler(STATUS_OSC, (data) => {
    deviceOpen = data !== "device=gone";
    body.dataset.device = deviceOpen ? "open" : "gone";
    if (socket && socket.readyState === WebSocket.OPEN) showConnected();
    return true;
  });

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(message);
  }

  function sendInput(bytes) {
    for (let i = 0; i < bytes.length; i += MAX_INPUT) {
      const piece = bytes.subarray(i, i + MAX_INPUT);
      const message = new Uint8Array(3 + piece.length);
      message[0] = 0x00;
      new DataView(message.buffer).setUint16(1, piece.length);
      message.set(piece, 3);
      send(message);
    }
  }

  function sendResize() {
    if (readOnly) return;
    const message = new Uint8Array(5);
    message[0] = 0x01;
    const view = new DataView(message.buffer);
    view.setUint16(1, term.rows);
    view.setUint16(3, term.cols);
    send(message);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws?token=${encodeURIComponent(token)}`;
    const ws = new WebSocket(url, ["binary"]);
    ws.binaryType = "arraybuffer";
    socket = ws;
    setStatus("connecting", "connecting");
    ws.onopen = () => {
      retryMs = 500;
      // The server starts with its replay of recent output: start from a clean screen.
      term.reset();
      showConnected();
      sendResize();
    };
    ws.onmessage = (event) => term.write(new Uint8Array(event.data));
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      setStatus(`disconnected, retrying in ${retryMs / 1000}s`, "disconnected");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    };
  }

  const encoder = new TextEncoder();
  term.onData((data) => sendInput(encoder.encode(data)));
  term.onBinary((data) => sendInput(Uint8Array.from(data, (c) => c.charCodeAt(0))));
  term.onResize(sendResize);
  window.addEventListener("resize", () => fit.fit());
  connect();
  term.focus();
})();
