// Substruct web UI: the little script the pages need (served by the controller; no
// other origin). Live rows over server-sent events, confirmations, and image uploads
// (SHA-256 in the browser, then a streamed PUT with a progress bar).
"use strict";

(function () {
  const csrf = document.body ? document.body.dataset.csrf : undefined;

  // Forms with data-confirm ask first.
  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    const submitter = ev.submitter;
    const message = (submitter && submitter.dataset.confirm) || form.dataset.confirm;
    if (message && !window.confirm(message)) {
      ev.preventDefault();
    }
  });

  // --- Live updates -------------------------------------------------------------
  function rowFromHtml(text) {
    const t = document.createElement("template");
    t.innerHTML = "<table><tbody>" + text + "</tbody></table>";
    return t.content.querySelector("tr");
  }

  // A machine not on the page: counted, shown as a notice (a storm of new machines
  // must not become a storm of requests).
  let unseen = new Set();
  function noteNew(table, id) {
    unseen.add(id);
    let notice = document.getElementById("new-machines");
    if (!notice) {
      notice = document.createElement("p");
      notice.id = "new-machines";
      notice.className = "notice";
      table.parentNode.insertBefore(notice, table);
    }
    notice.textContent = unseen.size + " machine(s) changed or appeared off this page — ";
    const link = document.createElement("a");
    link.href = window.location.href;
    link.textContent = "reload";
    notice.appendChild(link);
  }

  async function refreshRow(table, id) {
    const existing = document.getElementById("m-" + id);
    if (!existing) {
      noteNew(table, id);
      return;
    }
    const r = await fetch("/ui/machines/" + encodeURIComponent(id) + "/row", { credentials: "same-origin" });
    if (!r.ok) {
      return;
    }
    const row = rowFromHtml(await r.text());
    if (!row) {
      return;
    }
    const current = document.getElementById("m-" + id);
    if (!current) {
      return;
    }
    current.replaceWith(row);
    row.classList.add("changed");
    window.substructLiveUpdates = (window.substructLiveUpdates || 0) + 1;
  }

  async function refreshMachinePage() {
    const r = await fetch(window.location.href, { credentials: "same-origin" });
    if (!r.ok) {
      return;
    }
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    for (const sel of ["#state", "#timeline", "p.meta", "p.state-detail"]) {
      const fresh = doc.querySelector(sel);
      const old = document.querySelector(sel);
      if (fresh && old) {
        old.replaceWith(fresh);
      }
    }
    window.substructLiveUpdates = (window.substructLiveUpdates || 0) + 1;
  }

  function follow() {
    const table = document.getElementById("machines");
    const timeline = document.getElementById("timeline");
    if (!table && !timeline) {
      return;
    }
    const after = (table || timeline).dataset.after || "0";
    const source = new EventSource("/ui/live?after=" + encodeURIComponent(after));
    window.substructLive = source;
    // A browser allows ~6 connections to one host: a stream left open by a page in the
    // back/forward cache would hold one, and a few of them stall every request.
    window.addEventListener("pagehide", function () { source.close(); });
    window.addEventListener("pageshow", function (ev) {
      if (ev.persisted) { window.location.reload(); }
    });
    source.onmessage = function (msg) {
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch (e) {
        return;
      }
      const id = event.machine_id;
      if (typeof id !== "string") {
        return;
      }
      if (table || timeline.dataset.machine === id) {
        pending.add(id);
        schedule();
      }
    };
    // Events are coalesced: in a discovery storm thousands arrive a second, and each
    // page asks for at most MAX_ROWS rows (or one reload of the machine) per FLUSH_MS.
    const FLUSH_MS = 500, MAX_ROWS = 50;
    const pending = new Set();
    let timer = null;
    function schedule() {
      if (timer === null) {
        timer = window.setTimeout(flush, FLUSH_MS);
      }
    }
    async function flush() {
      timer = null;
      if (timeline) {
        pending.clear();
        await refreshMachinePage();
        return;
      }
      const ids = Array.from(pending).slice(0, MAX_ROWS);
      ids.forEach(function (id) { pending.delete(id); });
      await Promise.all(ids.map(function (id) { return refreshRow(table, id); }));
      if (pending.size > 0) {
        schedule();
      }
    }
  }

  // --- Image upload -------------------------------------------------------------
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);

  // Incremental SHA-256 (window.crypto.subtle is missing on plain-HTTP pages, and
  // cannot hash a file in parts).
  function Sha256() {
    this.h = new Uint32Array([
      0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]);
    this.w = new Uint32Array(64);
    this.buf = new Uint8Array(64);
    this.fill = 0;
    this.length = 0;
  }
  Sha256.prototype.block = function (b, o) {
    const w = this.w, h = this.h;
    for (let i = 0; i < 16; i++) {
      w[i] = (b[o + 4 * i] << 24) | (b[o + 4 * i + 1] << 16) | (b[o + 4 * i + 2] << 8) | b[o + 4 * i + 3];
    }
    for (let i = 16; i < 64; i++) {
      const x = w[i - 15], y = w[i - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[i] + w[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & bb) ^ (a & c) ^ (bb & c);
      const t2 = (S0 + maj) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = bb; bb = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += bb; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  };
  Sha256.prototype.update = function (data) {
    let i = 0;
    this.length += data.length;
    if (this.fill > 0) {
      while (i < data.length && this.fill < 64) {
        this.buf[this.fill++] = data[i++];
      }
      if (this.fill === 64) {
        this.block(this.buf, 0);
        this.fill = 0;
      }
    }
    for (; i + 64 <= data.length; i += 64) {
      this.block(data, i);
    }
    while (i < data.length) {
      this.buf[this.fill++] = data[i++];
    }
  };
  Sha256.prototype.hex = function () {
    const bits = this.length * 8;
    const pad = new Uint8Array(((this.fill < 56) ? 56 : 120) - this.fill + 8);
    pad[0] = 0x80;
    const hi = Math.floor(bits / 0x100000000), lo = bits >>> 0;
    const n = pad.length;
    pad[n - 8] = hi >>> 24; pad[n - 7] = hi >>> 16; pad[n - 6] = hi >>> 8; pad[n - 5] = hi;
    pad[n - 4] = lo >>> 24; pad[n - 3] = lo >>> 16; pad[n - 2] = lo >>> 8; pad[n - 1] = lo;
    const length = this.length;
    this.update(pad);
    this.length = length;
    return Array.from(this.h, (x) => (x >>> 0).toString(16).padStart(8, "0")).join("");
  };
  window.substructSha256 = function (text) {
    const s = new Sha256();
    s.update(new TextEncoder().encode(text));
    return s.hex();
  };

  function upload() {
    const form = document.getElementById("upload-form");
    if (!form) {
      return;
    }
    const bar = document.getElementById("upload-progress");
    const status = document.getElementById("upload-status");
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const file = document.getElementById("image-file").files[0];
      const name = document.getElementById("image-name").value.trim();
      const kind = document.getElementById("image-kind").value;
      if (!file || !name) {
        return;
      }
      const CHUNK = 4 * 1024 * 1024;
      const hash = new Sha256();
      for (let off = 0; off < file.size; off += CHUNK) {
        const part = new Uint8Array(await file.slice(off, off + CHUNK).arrayBuffer());
        hash.update(part);
        bar.value = Math.floor((50 * Math.min(off + CHUNK, file.size)) / Math.max(file.size, 1));
        status.textContent = "hashing… " + bar.value * 2 + "%";
      }
      const sha = hash.hex();
      status.textContent = "uploading (sha256 " + sha.slice(0, 12) + "…)";
      const put = await new Promise(function (resolve) {
        const xhr = new XMLHttpRequest();
        xhr.open("PUT", "/ui/images/content/" + sha);
        xhr.setRequestHeader("X-CSRF-Token", csrf);
        xhr.setRequestHeader("Content-Type", "application/octet-stream");
        xhr.upload.onprogress = function (e) {
          if (e.lengthComputable) {
            bar.value = 50 + Math.floor((50 * e.loaded) / Math.max(e.total, 1));
          }
        };
        xhr.onload = function () { resolve({ ok: xhr.status < 300, text: xhr.responseText }); };
        xhr.onerror = function () { resolve({ ok: false, text: "network error" }); };
        xhr.send(file);
      });
      if (!put.ok) {
        status.textContent = "upload refused: " + put.text;
        status.className = "error";
        return;
      }
      const reg = await fetch("/ui/images", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ name: name, kind: kind, sha256: sha, size: file.size }),
      });
      if (!reg.ok) {
        status.textContent = "registering refused: " + (await reg.text());
        status.className = "error";
        return;
      }
      bar.value = 100;
      status.textContent = "uploaded " + name;
      window.location.reload();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    follow();
    upload();
  });
})();
