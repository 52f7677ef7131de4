/* An image in the chat's message box: the Attach button, drag and drop, paste, the preview chip.
   chat.js asks Relay.attachment for the chosen file when a message is sent (to the vision agent). */
(function () {
  "use strict";
  const R = window.Relay, el = R.el;
  const button = document.getElementById("attach");
  const input = document.getElementById("attach-input");
  const box = document.getElementById("attachments");
  const message = document.getElementById("attach-message");
  const prompt = document.getElementById("prompt");
  const main = document.querySelector(".chat-main");
  const root = document.getElementById("chat");
  if (!button || !input || !box || !root) return;  // this user may not use the vision agent

  // What the vision agent reads (agents/kinds/vision.py); anything else would come back a 400.
  const TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff"];
  const maxBytes = Number(root.dataset.maxUploadBytes) || 0;
  let file = null, preview = null;

  function size(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  function say(text) {
    message.textContent = text;
    message.hidden = !text;
  }

  function refusal(candidate) {
    const name = candidate.name || "This file";
    if (TYPES.indexOf(candidate.type) < 0) {
      return name + " is not an image Relay can read. Attach a PNG, JPEG, GIF, WebP, BMP or TIFF file.";
    }
    if (maxBytes && candidate.size > maxBytes) {
      return name + " is " + size(candidate.size) + "; images up to " + size(maxBytes) + " can be sent.";
    }
    return "";
  }

  function attach(candidate) {
    const problem = refusal(candidate);
    if (problem) { say(problem); return false; }
    say("");
    clear();
    file = candidate;
    preview = URL.createObjectURL(candidate);
    const remove = el("button", { type: "button", class: "icon attach-remove", "aria-label": "Remove image",
      title: "Remove image", onclick: function () { clear(); button.focus(); } },
    [el("span", { class: "i i-close-small", "aria-hidden": "true" })]);
    box.append(el("div", { class: "attach-chip", "data-name": candidate.name || "image" }, [
      el("img", { class: "attach-thumb", src: preview, alt: "" }),
      el("span", { class: "attach-name", text: candidate.name || "Pasted image" }),
      el("span", { class: "attach-size", text: size(candidate.size) }),
      remove,
    ]));
    prompt.required = false;  // an image alone is a question ("Describe this image.")
    return true;
  }

  function clear() {
    if (preview) URL.revokeObjectURL(preview);
    file = null;
    preview = null;
    box.replaceChildren();
    prompt.required = true;
  }

  function firstImage(list) {
    const files = [...(list || [])];
    return files.find(function (f) { return f.type.startsWith("image/"); }) || files[0] || null;
  }

  button.addEventListener("click", function () { input.click(); });
  input.addEventListener("change", function () {
    if (input.files.length) attach(input.files[0]);
    input.value = "";  // choosing the same file again still fires change
    prompt.focus();
  });

  prompt.addEventListener("paste", function (event) {
    const data = event.clipboardData;
    const image = data && [...data.files].find(function (f) { return f.type.startsWith("image/"); });
    if (!image) return;
    if (!data.getData("text/plain")) event.preventDefault();  // an image alone: nothing to paste as text
    attach(image);
  });

  // Drag and drop onto the conversation or the message box; the counter survives child elements.
  let depth = 0;
  function carriesFiles(event) { return event.dataTransfer && [...event.dataTransfer.types].indexOf("Files") >= 0; }
  function dropping(on) { main.classList.toggle("drop-active", on); }
  main.addEventListener("dragenter", function (event) {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth += 1;
    dropping(true);
  });
  main.addEventListener("dragover", function (event) {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  main.addEventListener("dragleave", function (event) {
    if (!carriesFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (!depth) dropping(false);
  });
  main.addEventListener("drop", function (event) {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth = 0;
    dropping(false);
    const dropped = firstImage(event.dataTransfer.files);
    if (dropped && attach(dropped)) prompt.focus();
  });

  R.attachment = {
    current: function () { return file; },
    clear: clear,
    thumbnail: function (image) { return el("img", { class: "attach-thumb", src: URL.createObjectURL(image), alt: "" }); },
  };
})();
