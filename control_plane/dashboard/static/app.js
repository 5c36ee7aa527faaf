// EdgeFleet dashboard: live parts of pages, confirmation dialogs and the bundle upload.
// No dependencies, nothing inline: the pages' Content-Security-Policy allows only this file.
(function () {
  "use strict";

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function showLiveStatus(text, state) {
    const status = document.getElementById("live-status");
    if (!status) return;
    status.hidden = false;
    status.textContent = text;
    status.className = "live-status " + state;
  }

  // Where keyboard focus was inside a part, so it can be put back after the part is redrawn.
  function focusKey(part) {
    const active = document.activeElement;
    if (!active || !part.contains(active)) return null;
    if (active.id) return "#" + CSS.escape(active.id);
    if (active.dataset && active.dataset.dialog) return '[data-dialog="' + active.dataset.dialog + '"]';
    return null;
  }

  function replacePart(part, html) {
    const key = focusKey(part);
    part.innerHTML = html;
    if (key) {
      const again = part.querySelector(key);
      if (again) again.focus();
    }
  }

  // One server-sent-events stream for every live part of the page; the server sends a part's
  // new HTML whenever it changes.
  function startLive() {
    const parts = document.querySelectorAll("[data-live]");
    if (!parts.length || !window.EventSource) return;
    const query = new URLSearchParams();
    parts.forEach(function (part) {
      query.append("topic", part.dataset.live + "@" + part.dataset.version);
    });
    const source = new EventSource("/dashboard/events?" + query.toString());
    source.addEventListener("open", function () { showLiveStatus("live", "on"); });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        showLiveStatus("live updates stopped: reload the page", "off");
      } else {
        showLiveStatus("reconnecting…", "off");
      }
    });
    source.addEventListener("update", function (event) {
      const message = JSON.parse(event.data);
      document.querySelectorAll("[data-live]").forEach(function (part) {
        if (part.dataset.live === message.topic) {
          replacePart(part, message.html);
          part.dispatchEvent(new CustomEvent("edgefleet:updated", { bubbles: true }));
        }
      });
    });
  }

  // Buttons with data-dialog="ID" open that <dialog>; its form asks for confirmation.
  function startDialogs() {
    document.addEventListener("click", function (event) {
      const trigger = event.target.closest("[data-dialog]");
      if (!trigger) return;
      const dialog = document.getElementById(trigger.dataset.dialog);
      if (dialog && typeof dialog.showModal === "function") {
        event.preventDefault();
        dialog.showModal();
      }
    });
  }

  // The bundle upload sends the file's bytes as the body, as `POST /api/v1/models` takes it.
  function startUpload() {
    const form = document.getElementById("upload-form");
    if (!form) return;
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const input = form.querySelector('input[type="file"]');
      const out = document.getElementById("upload-result");
      const button = form.querySelector('button[type="submit"]');
      const file = input.files[0];
      if (!file) return;
      button.disabled = true;
      out.className = "";
      out.textContent = "Uploading and verifying " + file.name + "…";
      try {
        const response = await fetch("/models/upload", {
          method: "POST",
          body: file,
          credentials: "same-origin",
          headers: {
            "X-CSRF-Token": csrfToken(),
            "Accept": "application/json",
            "Content-Type": "application/octet-stream",
          },
        });
        const body = await response.json();
        if (!response.ok) throw new Error(body.error || response.statusText);
        const link = document.createElement("a");
        link.href = "/models/" + encodeURIComponent(body.name) + "/versions/" + body.version;
        link.textContent = body.name + " v" + body.version;
        out.className = "ok";
        out.textContent = response.status === 201 ? "Uploaded and verified: " : "Already stored: ";
        out.append(link, " (signed by " + body.signer_keyid.slice(0, 16) + ")");
        form.reset();
      } catch (error) {
        out.className = "error";
        out.textContent = "Upload refused: " + error.message;
      } finally {
        button.disabled = false;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    startDialogs();
    startUpload();
    startLive();
  });
})();
