/* Relay console: helpers shared by the pages (no inline scripts: a CSP forbids them). */
(function () {
  "use strict";

  function cookie(name) {
    const match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : "";
  }

  /* fetch() for the JSON API with the session: CSRF header on unsafe methods, errors as Error
     objects carrying the envelope's code, message and per-field messages. */
  async function api(path, options) {
    const opts = Object.assign({ method: "GET", headers: {} }, options || {});
    opts.credentials = "same-origin";
    opts.headers = Object.assign({ Accept: "application/json" }, opts.headers);
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    if (!/^(GET|HEAD)$/i.test(opts.method)) opts.headers["X-CSRFToken"] = cookie("csrftoken");
    let response;
    try {
      response = await fetch(path, opts);
    } catch (e) {
      const err = new Error("Relay could not be reached. Check your connection and try again.");
      err.code = "network";
      throw err;
    }
    const type = response.headers.get("Content-Type") || "";
    const body = type.includes("json") ? await response.json() : null;
    if (!response.ok) {
      const envelope = (body && body.error) || {};
      const err = new Error(envelope.message || ("Request failed (" + response.status + ")."));
      err.code = envelope.code || String(response.status);
      err.fields = envelope.fields || {};
      err.status = response.status;
      throw err;
    }
    return body;
  }

  // An SVG icon (static/icons/, drawn by static/css/icons.css); the button around it carries the name.
  function icon(name) {
    return el("span", { class: "i i-" + name, "aria-hidden": "true" });
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(function ([key, value]) {
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) node.append(child);
    });
    return node;
  }

  function jsonData(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  /* The one display rule for money (static/js/money.js, loaded first by base.html). */
  const usd = window.RelayMoney.usd;

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      const area = el("textarea", { class: "offscreen" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    if (button) {
      const target = button.querySelector(".label") || button;  // keep an icon beside the label
      const label = target.textContent;
      target.textContent = "Copied";
      setTimeout(function () { target.textContent = label; }, 1500);
    }
  }

  /* Buttons with data-copy-target copy that element's text. */
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-copy-target]");
    if (!button) return;
    const target = document.getElementById(button.dataset.copyTarget);
    if (target) copyText(target.value || target.textContent, button);
  });

  window.Relay = { api: api, el: el, icon: icon, jsonData: jsonData, usd: usd, copyText: copyText, cookie: cookie };
})();
