// The upload page of `anytus serve`: a small tus 1.0.0 client (core protocol + creation), no
// dependencies. Each picked file is created with POST (Upload-Length, Upload-Metadata filename and
// filetype), then sent in PATCHes of `chunkSize` bytes; the upload URL is kept in localStorage
// under a fingerprint of the file (name, size, lastModified), so that picking the same file again,
// after a pause, a failure or a reload of the page, asks the server for its offset with HEAD and
// sends only the rest.
"use strict";

(function () {
  const TUS_VERSION = "1.0.0";
  const STORAGE_PREFIX = "anytus-upload:";
  // a PATCH carries at most this many bytes; `?chunk_size=N` in the page URL overrides it
  const DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024;
  // waits before retrying after a network error, a 5xx, 409 or 423, in milliseconds
  const RETRY_DELAYS = [500, 1000, 3000, 5000];

  const endpointMeta = document.querySelector('meta[name="tus-endpoint"]');
  const endpoint = new URL(endpointMeta ? endpointMeta.content : "files/", document.baseURI).href;
  const chunkSize = (function () {
    const asked = Number(new URL(location.href).searchParams.get("chunk_size"));
    return Number.isSafeInteger(asked) && asked > 0 ? asked : DEFAULT_CHUNK_SIZE;
  })();

  // uploads on this page by fingerprint: the same file picked twice must not race itself
  const uploads = new Map();

  function base64(text) {
    // UTF-8 bytes, then base64 (btoa takes one byte per character)
    const bytes = new TextEncoder().encode(text);
    let binary = "";
    for (const byte of bytes) binary += String.fromCharCode(byte);
    return btoa(binary);
  }

  function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }

  function fingerprint(file) {
    return STORAGE_PREFIX + [endpoint, file.name, file.size, file.lastModified].join("\u0000");
  }

  function loadStored(key) {
    try {
      const value = JSON.parse(localStorage.getItem(key) || "null");
      return value && typeof value.url === "string" ? value : null;
    } catch (err) {
      return null; // storage disabled or a foreign value: start a new upload
    }
  }

  function store(key, url) {
    try {
      localStorage.setItem(key, JSON.stringify({ url: url, created: Date.now() }));
    } catch (err) {
      // storage full or disabled: the upload still works, it just cannot resume after a reload
    }
  }

  function forget(key) {
    try {
      localStorage.removeItem(key);
    } catch (err) {
      // nothing to forget
    }
  }

  // An HTTP error the server answered: `retry` tells whether trying again can help.
  class HttpError extends Error {
    constructor(method, status, body) {
      const reason = (body || "").trim().slice(0, 300);
      super(method + " answered " + status + (reason ? ": " + reason : ""));
      this.status = status;
      this.retry = status >= 500 || status === 409 || status === 423;
    }
  }

  // One request as a promise; XMLHttpRequest rather than fetch for its upload progress events.
  function request(method, url, headers, body, onProgress, onXhr) {
    return new Promise(function (resolve, reject) {
      const xhr = new XMLHttpRequest();
      xhr.open(method, url, true);
      xhr.setRequestHeader("Tus-Resumable", TUS_VERSION);
      for (const name of Object.keys(headers)) xhr.setRequestHeader(name, headers[name]);
      if (onProgress) xhr.upload.onprogress = function (e) { onProgress(e.loaded); };
      xhr.onload = function () { resolve(xhr); };
      xhr.onerror = function () {
        const err = new Error(method + " failed: network error");
        err.retry = true;
        reject(err);
      };
      xhr.onabort = function () {
        const err = new Error("aborted");
        err.aborted = true;
        reject(err);
      };
      if (onXhr) onXhr(xhr);
      xhr.send(body === undefined ? null : body);
    });
  }

  class Upload {
    constructor(file, list) {
      this.file = file;
      this.key = fingerprint(file);
      this.url = null;
      this.offset = 0;
      this.xhr = null;
      this.running = false;
      this.paused = false;
      this.attempt = 0;
      this.retryTimer = null;
      this.resumeWanted = false;
      this.resumedFrom = undefined;
      this.render(list);
    }

    render(list) {
      const li = document.createElement("li");
      const row = document.createElement("div");
      row.className = "row";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = this.file.name; // textContent: a file name is never markup
      const size = document.createElement("span");
      size.textContent = formatBytes(this.file.size);
      const button = document.createElement("button");
      button.type = "button";
      button.className = "toggle";
      button.addEventListener("click", () => (this.paused || this.state === "error" ? this.resume() : this.pause()));
      row.append(name, size, button);
      const progress = document.createElement("progress");
      progress.max = Math.max(this.file.size, 1);
      progress.value = 0;
      const status = document.createElement("div");
      status.className = "status";
      status.setAttribute("role", "status");
      li.append(row, progress, status);
      list.append(li);
      Object.assign(this, { li: li, button: button, progress: progress, status: status });
      this.li.dataset.fingerprint = this.key;
    }

    // state: creating, resuming, uploading, retrying, paused, done or error
    setState(state, message) {
      this.state = state;
      this.li.dataset.state = state;
      this.status.textContent = message;
      this.button.hidden = state === "done";
      this.button.textContent = state === "paused" || state === "error" ? "Resume" : "Pause";
    }

    showProgress(sent) {
      const size = this.file.size;
      this.progress.value = size === 0 ? 1 : sent;
      this.li.dataset.offset = String(this.offset);
      const percent = size === 0 ? 100 : Math.floor((sent / size) * 100);
      this.status.textContent =
        formatBytes(sent) + " of " + formatBytes(size) + " (" + percent + "%)" +
        (this.resumedFrom !== undefined ? ", resumed at " + formatBytes(this.resumedFrom) : "");
    }

    start() {
      this.paused = false;
      this.attempt = 0;
      this.run();
    }

    pause() {
      if (this.state === "done") return;
      this.paused = true;
      clearTimeout(this.retryTimer);
      if (this.xhr) this.xhr.abort(); // the server keeps the bytes it received
      this.setState("paused", "Paused at " + formatBytes(this.offset) + ". The server keeps what it received.");
    }

    resume() {
      if (this.state === "done") return;
      if (this.running) {
        // the aborted request has not settled yet: go on once it has
        this.paused = false;
        this.resumeWanted = true;
        return;
      }
      this.start();
    }

    async run() {
      if (this.running) return;
      this.running = true;
      try {
        await this.upload();
      } catch (err) {
        if (err.aborted || this.paused) return; // pause() set the state
        if (err.retry && this.attempt < RETRY_DELAYS.length) {
          const delay = RETRY_DELAYS[this.attempt];
          this.attempt += 1;
          this.setState("retrying", err.message + "; retrying in " + delay / 1000 + " s");
          this.retryTimer = setTimeout(() => this.run(), delay);
          return;
        }
        this.setState("error", err.message);
      } finally {
        this.running = false;
        this.xhr = null;
        if (this.resumeWanted) {
          this.resumeWanted = false;
          if (!this.paused) this.start();
        }
      }
    }

    send(method, url, headers, body, onProgress) {
      return request(method, url, headers, body, onProgress, (xhr) => { this.xhr = xhr; });
    }

    async upload() {
      if (this.url === null) {
        const stored = loadStored(this.key);
        if (stored) this.url = stored.url;
      }
      if (this.url !== null) {
        // resuming (this page, or an earlier one): the server says how much it has
        this.setState("resuming", "Asking the server how much it has...");
        const xhr = await this.send("HEAD", this.url, {});
        if (this.paused) return;
        const length = xhr.getResponseHeader("Upload-Length");
        const offset = Number(xhr.getResponseHeader("Upload-Offset"));
        if (xhr.status === 200 && Number.isSafeInteger(offset) &&
            (length === null || Number(length) === this.file.size) && offset <= this.file.size) {
          this.offset = offset;
          this.resumedFrom = offset;
          this.li.dataset.resumedFrom = String(offset);
        } else if (xhr.status === 404 || xhr.status === 410 || xhr.status === 403 || xhr.status === 200) {
          // gone, expired or not this file's: start over with a new upload
          forget(this.key);
          this.url = null;
          this.offset = 0;
        } else {
          throw new HttpError("HEAD", xhr.status, xhr.responseText);
        }
      }
      if (this.url === null) {
        this.setState("creating", "Creating the upload...");
        const metadata = "filename " + base64(this.file.name) +
          (this.file.type ? ",filetype " + base64(this.file.type) : "");
        const xhr = await this.send("POST", endpoint, {
          "Upload-Length": String(this.file.size),
          "Upload-Metadata": metadata,
        });
        const location = xhr.getResponseHeader("Location");
        if (xhr.status !== 201 || !location) throw new HttpError("POST", xhr.status, xhr.responseText);
        this.url = new URL(location, endpoint).href;
        this.offset = 0;
        this.li.dataset.url = this.url;
        store(this.key, this.url);
      }
      if (this.paused) return;
      this.li.dataset.url = this.url;
      this.setState("uploading", "");
      this.showProgress(this.offset);
      while (this.offset < this.file.size) {
        if (this.paused) return;
        const end = Math.min(this.offset + chunkSize, this.file.size);
        const start = this.offset;
        const xhr = await this.send(
          "PATCH", this.url,
          { "Upload-Offset": String(start), "Content-Type": "application/offset+octet-stream" },
          this.file.slice(start, end),
          (loaded) => this.showProgress(Math.min(start + loaded, end)),
        );
        if (xhr.status !== 204) {
          // 409: our offset is stale (an earlier request stored more than we know); the retry
          // asks with HEAD first
          throw new HttpError("PATCH", xhr.status, xhr.responseText);
        }
        const offset = Number(xhr.getResponseHeader("Upload-Offset"));
        if (!Number.isSafeInteger(offset) || offset <= start || offset > this.file.size) {
          throw new HttpError("PATCH", xhr.status, "bad Upload-Offset " + offset);
        }
        this.offset = offset;
        this.attempt = 0; // progress was made: a later failure gets every retry again
        this.showProgress(offset);
      }
      forget(this.key);
      this.li.dataset.offset = String(this.offset);
      this.progress.value = this.progress.max;
      this.setState("done", "Uploaded " + formatBytes(this.file.size) + " to " + this.url);
    }
  }

  function add(files, list) {
    for (const file of files) {
      const key = fingerprint(file);
      const existing = uploads.get(key);
      if (existing && existing.state !== "done") {
        // picked again while on the page: go on with the one there is
        existing.file = file;
        existing.resume();
        continue;
      }
      const upload = new Upload(file, list);
      uploads.set(key, upload);
      upload.start();
    }
  }

  function init() {
    const list = document.getElementById("uploads");
    const input = document.getElementById("files");
    const drop = document.getElementById("drop");
    document.getElementById("endpoint").textContent = endpoint;
    if (typeof Blob === "undefined" || !Blob.prototype.slice || typeof XMLHttpRequest === "undefined") {
      document.getElementById("unsupported").hidden = false;
      return;
    }
    input.addEventListener("change", function () {
      add(Array.from(input.files), list);
      input.value = ""; // picking the same file again fires `change` again
    });
    drop.addEventListener("dragover", function (e) {
      e.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
    drop.addEventListener("drop", function (e) {
      e.preventDefault();
      drop.classList.remove("over");
      add(Array.from(e.dataTransfer.files), list);
    });
    document.body.dataset.ready = "true";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
