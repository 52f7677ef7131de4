/* Chat: answers stream over the WebSocket /ws/chat/ (docs/design.md section 6). */
(function () {
  "use strict";
  const R = window.Relay, el = R.el;
  const root = document.getElementById("chat");
  if (!root) return;

  const ui = {
    messages: document.getElementById("messages"),
    list: document.getElementById("conversation-list"),
    title: document.getElementById("conversation-title"),
    connection: document.getElementById("connection"),
    error: document.getElementById("chat-error"),
    composer: document.getElementById("composer"),
    prompt: document.getElementById("prompt"),
    agent: document.getElementById("agent"),
    send: document.getElementById("send"),
    stop: document.getElementById("stop"),
  };
  const agents = R.jsonData("agents-data") || [];
  const STATUS_TEXT = {
    complete: "", cancelled: "Cancelled: you stopped this answer.", error: "The answer failed.",
    budget_stop: "Stopped: a budget ran out.", interrupted: "Interrupted: the connection dropped.",
    running: "Still answering…",
  };

  let socket = null, retries = 0, conversationId = null, run = null, resumeAfterReconnect = false;

  /* --- connection -------------------------------------------------------------------------- */
  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = text;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + root.dataset.wsPath);
    setConnection("connecting", retries ? "Reconnecting…" : "Connecting…");
    socket.addEventListener("open", function () {
      const wasRetry = retries > 0;
      retries = 0;
      setConnection("open", "Connected");
      updateControls();
      if (wasRetry && resumeAfterReconnect) {
        resumeAfterReconnect = false;
        if (conversationId) loadConversation(conversationId, { poll: true });
      }
    });
    socket.addEventListener("message", function (frame) {
      let event;
      try { event = JSON.parse(frame.data); } catch (e) { return; }
      onEvent(event);
    });
    socket.addEventListener("close", function (close) {
      socket = null;
      if (close.code === 4401) { setConnection("closed", "Signed out"); showError("Your session ended. Sign in again."); return; }
      if (run) {
        // The server stores what was generated when the socket drops; show it once we are back.
        if (run.conversationId) conversationId = run.conversationId;
        finish(run, "interrupted");
        resumeAfterReconnect = true;
      }
      retries += 1;
      setConnection("closed", "Connection lost. Reconnecting…");
      updateControls();
      setTimeout(connect, Math.min(5000, 300 * 2 ** Math.min(retries, 5)));
    });
  }

  function send(message) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  }

  /* --- rendering --------------------------------------------------------------------------- */
  function clearEmpty() {
    const empty = document.getElementById("empty-state");
    if (empty) empty.remove();
  }

  function scrollDown() { ui.messages.scrollTop = ui.messages.scrollHeight; }

  function userBubble(text) {
    clearEmpty();
    const li = el("li", { class: "msg user" }, [el("div", { class: "content", text: text })]);
    ui.messages.append(li);
    scrollDown();
    return li;
  }

  function assistantBubble(agentName) {
    clearEmpty();
    const bubble = {
      node: el("li", { class: "msg assistant", "data-state": "streaming" }),
      head: el("div", { class: "msg-head", text: agentTitle(agentName) }),
      tools: el("div", { class: "tools" }),
      content: el("div", { class: "content" }),
      alert: el("p", { class: "msg-alert", role: "alert", hidden: true }),
      meta: el("div", { class: "meta" }, [el("span", { class: "typing", text: "Thinking…" })]),
      toolNodes: {},
    };
    bubble.node.append(bubble.head, bubble.tools, bubble.content, bubble.alert, bubble.meta);
    ui.messages.append(bubble.node);
    scrollDown();
    return bubble;
  }

  function agentTitle(name) {
    const agent = agents.find(function (a) { return a.name === name; });
    return agent ? agent.title : (name || "Assistant");
  }

  function showTool(bubble, call) {
    const id = call.call_id || (call.tool || call.name) + bubble.tools.children.length;
    let node = bubble.toolNodes[id];
    if (!node) {
      node = {
        box: el("div", { class: "tool" }),
        status: el("span", { class: "tool-status" }),
        duration: el("span", { class: "tool-duration" }),
      };
      node.box.append(el("span", { class: "tool-name", text: call.tool || call.name || "tool" }), node.status, node.duration);
      bubble.toolNodes[id] = node;
      bubble.tools.append(node.box);
    }
    bubble.passages = (bubble.passages || []).concat(R.citations.passagesOf([call]));  // static/js/citations.js
    const status = call.status || "done";
    node.box.dataset.status = status;
    node.status.textContent = status === "running" ? "running…" : status;
    if (call.duration_ms !== undefined && call.duration_ms !== null) node.duration.textContent = call.duration_ms + " ms";
    if (call.input !== undefined && !node.input) {
      node.input = el("details", { class: "tool-io" }, [el("summary", { text: "Input" }), el("pre", { text: pretty(call.input) })]);
      node.box.append(node.input);
    }
    if (call.output !== undefined && call.output !== null && !node.output) {
      node.output = el("details", { class: "tool-io" }, [el("summary", { text: "Output" }), el("pre", { text: pretty(call.output) })]);
      node.box.append(node.output);
    }
  }

  function pretty(value) { return typeof value === "string" ? value : JSON.stringify(value, null, 2); }

  function showMeta(bubble, info) {
    bubble.node.dataset.state = info.status || "complete";
    bubble.meta.replaceChildren();
    const parts = [];
    if (info.model) parts.push(info.model);
    if (info.input_tokens !== undefined) parts.push(info.input_tokens + " in / " + info.output_tokens + " out tokens");
    else if (info.total_tokens !== undefined) parts.push(info.total_tokens + " tokens");
    if (info.cost !== undefined) parts.push(R.usd(info.cost));
    if (info.latency_ms) parts.push((info.latency_ms / 1000).toFixed(1) + " s");
    bubble.meta.append(el("span", { class: "usage", text: parts.join(" · ") }));
    const note = STATUS_TEXT[info.status];
    if (note) bubble.meta.append(el("span", { class: "status-note status-" + info.status, text: note }));
    if (info.message_id && (info.status === "complete" || info.status === "cancelled")) {
      bubble.meta.append(feedbackButtons(info.message_id, info.feedback));
    }
  }

  function feedbackButtons(messageId, current) {
    const box = el("span", { class: "feedback", role: "group", "aria-label": "Rate this answer" });
    [[1, "thumbs-up", "Good answer"], [-1, "thumbs-down", "Bad answer"]].forEach(function ([rating, icon, label]) {
      const button = el("button", {
        type: "button", class: "icon", "aria-label": label, title: label, "aria-pressed": String(current === rating),
        onclick: async function () {
          try {
            await R.api("/api/v1/messages/" + messageId + "/feedback", { method: "POST", json: { rating: rating } });
            box.querySelectorAll("button").forEach(function (b) { b.setAttribute("aria-pressed", String(b === button)); });
          } catch (e) { showError(e.message); }
        },
      }, [R.icon(icon)]);
      box.append(button);
    });
    return box;
  }

  function showAlert(bubble, message) {
    bubble.alert.textContent = message;
    bubble.alert.hidden = false;
  }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = !message;
  }

  /* --- a run ------------------------------------------------------------------------------- */
  function onEvent(event) {
    if (event.type === "pong" || event.type === "authenticated") return;
    if (!run || (event.conversation_id && run.conversationId && event.conversation_id !== run.conversationId)) {
      if (event.type === "error" && !event.conversation_id) showError(event.message);
      return;
    }
    const bubble = run.bubble;
    switch (event.type) {
      case "start":
        run.conversationId = event.conversation_id;
        run.messageId = event.message_id;
        run.model = event.model;
        bubble.node.dataset.messageId = event.message_id;
        bubble.head.textContent = agentTitle(event.agent) + " · " + event.model;
        if (conversationId !== event.conversation_id) {
          conversationId = event.conversation_id;
          rememberConversation(conversationId, run.query, event.agent);
        }
        break;
      case "token":
        if (!bubble.text) bubble.meta.replaceChildren(el("span", { class: "typing", text: "Answering…" }));
        bubble.text = (bubble.text || "") + event.content;
        R.render.stream(bubble.content, bubble.text);  // static/js/render.js: Markdown, math, code
        scrollDown();
        break;
      case "tool_call":
        showTool(bubble, event);
        break;
      case "usage":
        run.usage = event;
        break;
      case "error":
        run.error = event;
        showAlert(bubble, event.message);
        if (!run.messageId) finish(run, event.code === "budget_exceeded" ? "budget_stop" : "error");
        break;
      case "done": {
        const current = run;
        finish(current, event.status, event);
        afterRun(current);
        break;
      }
    }
  }

  function finish(current, status, done) {
    R.render.flush(current.bubble.content);
    R.citations.decorate(current.bubble.content, current.bubble.passages);
    const usage = current.usage || {};
    showMeta(current.bubble, {
      status: status, model: current.model, message_id: current.messageId,
      input_tokens: usage.input_tokens, output_tokens: usage.output_tokens,
      total_tokens: done ? done.total_tokens : undefined,
      cost: usage.cost !== undefined ? usage.cost : (done ? done.cost : undefined),
    });
    if (run === current) run = null;
    updateControls();
  }

  function updateControls() {
    const open = socket && socket.readyState === WebSocket.OPEN;
    ui.send.disabled = !open || !!run;
    ui.stop.hidden = !run;
    // A Stop pressed in the last run disables the button for a moment; the next run starts with it usable.
    if (!run) ui.stop.disabled = false;
  }

  function ask(query) {
    const agentName = ui.agent.value;
    showError("");
    userBubble(query);
    run = { conversationId: conversationId, query: query, bubble: assistantBubble(agentName) };
    const message = { type: "query", query: query, agent_type: agentName };
    if (conversationId) message.conversation_id = conversationId;
    const shown = tree ? branch() : [];
    if (conversationId && shown.length) message.parent = shown[shown.length - 1].message.id;  // the branch on screen
    startRun(message);
  }

  ui.composer.addEventListener("submit", function (event) {
    event.preventDefault();
    const query = ui.prompt.value.trim(), image = R.attachment && R.attachment.current();
    if ((!query && !image) || run) return;  // `run` is set at once: a second Enter sends nothing
    ui.prompt.value = "";
    if (image) { R.attachment.clear(); askVision(query, image); } else ask(query);
    ui.prompt.focus();
  });
  ui.prompt.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });
  ui.stop.addEventListener("click", function () {
    if (!run) return;
    if (run.upload) { run.upload.abort(); return; }  // the upload answers in one piece: stop waiting for it
    ui.stop.disabled = true;
    const message = { type: "cancel" };
    if (run.conversationId) message.conversation_id = run.conversationId;
    send(message);
    setTimeout(function () { ui.stop.disabled = false; }, 500);
  });

  /* --- conversations: the sidebar (search, rename, pin, delete) ----------------------------- */
  const search = document.getElementById("conversation-search");
  let conversations = R.jsonData("conversations-data") || [];

  function renderList() {
    ui.list.replaceChildren();
    if (!conversations.length) {
      const text = search && search.value.trim() ? "No conversations match." : "No conversations yet.";
      ui.list.append(el("li", { class: "muted small", id: "no-conversations", text: text }));
      return;
    }
    conversations.forEach(function (c) { ui.list.append(conversationItem(c)); });
    markCurrent();
  }

  async function reloadList() {
    const query = search ? search.value.trim() : "";
    try {
      const page = await R.api("/api/v1/conversations/?search=" + encodeURIComponent(query));
      conversations = page.results;
      renderList();
    } catch (e) { showError(e.message); }
  }

  function conversationItem(c) {
    const title = c.title || "Untitled conversation";
    const item = el("li", { class: "conversation-item", "data-id": c.id, "data-pinned": String(!!c.pinned) });
    const actions = el("span", { class: "c-actions" }, [
      el("button", { type: "button", class: "icon c-pin", "aria-pressed": String(!!c.pinned),
        "aria-label": (c.pinned ? "Unpin: " : "Pin: ") + title, title: c.pinned ? "Unpin" : "Pin",
        onclick: function () { updateConversation(c.id, { pinned: !c.pinned }); } }, [R.icon(c.pinned ? "star-filled" : "star")]),
      el("button", { type: "button", class: "icon c-rename", "aria-label": "Rename: " + title, title: "Rename",
        onclick: function () { startRename(item, c); } }, [R.icon("pencil")]),
      el("button", { type: "button", class: "icon c-delete", "aria-label": "Delete: " + title, title: "Delete",
        onclick: function () { deleteConversation(c); } }, [R.icon("trash")]),
    ]);
    item.append(conversationButton(c), actions);
    return item;
  }

  function conversationButton(c) {
    return el("button", { type: "button", class: "conversation", "data-id": c.id }, [
      el("span", { class: "c-title", text: c.title || "Untitled conversation" }),
      el("span", { class: "c-agent", text: c.agent }),
    ]);
  }

  async function updateConversation(id, changes) {
    try {
      const updated = await R.api("/api/v1/conversations/" + id + "/", { method: "PATCH", json: changes });
      if (id === conversationId) ui.title.textContent = updated.title || "Untitled conversation";
      await reloadList();
      return true;
    } catch (e) { showError(e.fields && e.fields.title ? e.fields.title.join(" ") : e.message); return false; }
  }

  function startRename(item, c) {
    const input = el("input", { type: "text", class: "c-rename-input", maxlength: "200", "aria-label": "New title" });
    input.value = c.title || "";
    let done = false;
    async function end(save) {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== c.title) { if (await updateConversation(c.id, { title: title })) return; }
      renderList();
    }
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); end(true); }
      if (event.key === "Escape") { event.preventDefault(); end(false); }
    });
    input.addEventListener("blur", function () { end(true); });
    item.replaceChildren(input);
    input.focus();
    input.select();
  }

  async function deleteConversation(c) {
    if (run || !window.confirm("Delete “" + (c.title || "Untitled conversation") + "” and all its messages?")) return;
    try {
      await R.api("/api/v1/conversations/" + c.id + "/", { method: "DELETE" });
    } catch (e) { showError(e.message); return; }
    if (c.id === conversationId) startNew();
    await reloadList();
  }

  function rememberConversation(id, title, agentName) {
    conversations = conversations.filter(function (c) { return c.id !== id; });
    const firstUnpinned = conversations.findIndex(function (c) { return !c.pinned; });
    const entry = { id: id, title: title.slice(0, 60), agent: agentName, pinned: false };
    conversations.splice(firstUnpinned < 0 ? conversations.length : firstUnpinned, 0, entry);
    renderList();
    ui.title.textContent = title.slice(0, 60);
  }

  function markCurrent() {
    ui.list.querySelectorAll(".conversation").forEach(function (b) {
      if (b.dataset.id === conversationId) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    });
    document.dispatchEvent(new CustomEvent("relay:conversation", { detail: { id: conversationId } }));  // chat_training.js
  }

  async function loadConversation(id, options) {
    let detail;
    try {
      detail = await R.api("/api/v1/conversations/" + id + "/");
    } catch (e) { showError(e.message); return; }
    conversationId = id;
    markCurrent();
    ui.title.textContent = detail.title || "Untitled conversation";
    if ([...ui.agent.options].some(function (o) { return o.value === detail.agent; })) ui.agent.value = detail.agent;
    tree = buildTree(detail.messages);
    selected = {};
    renderTree();
    const last = detail.messages[detail.messages.length - 1];
    const polls = (options && options.polls) || 0;
    // Right after a dropped socket the server may still be storing the answer: look again shortly.
    if (options && options.poll && last && last.status === "running" && polls < 10) {
      setTimeout(function () { loadConversation(id, { poll: true, polls: polls + 1 }); }, 500);
    }
  }

  function renderStored(message) {
    if (message.role === "user") return userBubble(message.content);
    const bubble = assistantBubble(message.agent);
    bubble.node.dataset.messageId = message.id;
    bubble.head.textContent = agentTitle(message.agent) + (message.model ? " · " + message.model : "");
    (message.tool_calls || []).forEach(function (call) { showTool(bubble, call); });
    R.render.markdown(bubble.content, message.content);
    R.citations.decorate(bubble.content, bubble.passages);
    if (message.status === "budget_stop") showAlert(bubble, "A budget ran out while answering.");
    showMeta(bubble, Object.assign({ message_id: message.id }, message));
    return bubble.node;
  }

  /* --- versions: a conversation is a tree; the page shows one branch ----------------------- */
  // Messages with the same parent are versions of one turn (regenerated answers, edited questions);
  // `selected` remembers which version is shown per parent, the latest by default.
  let tree = null, selected = {};

  function buildTree(messages) {
    const children = {};
    messages.forEach(function (m) { (children[m.parent || "root"] = children[m.parent || "root"] || []).push(m); });
    return { children: children };
  }

  function branch() {
    const steps = [];
    let key = "root";
    while (tree && tree.children[key]) {
      const siblings = tree.children[key];
      const shown = siblings.find(function (m) { return m.id === selected[key]; }) || siblings[siblings.length - 1];
      steps.push({ key: key, message: shown, siblings: siblings });
      key = shown.id;
    }
    return steps;
  }

  function renderTree() {
    ui.messages.replaceChildren();
    branch().forEach(function (step) { decorate(renderStored(step.message), step); });
    scrollDown();
  }

  function decorate(node, step) {
    const message = step.message, index = step.siblings.indexOf(message), count = step.siblings.length;
    node.dataset.messageId = message.id;
    const old = node.querySelector(":scope > .msg-actions");
    if (old) old.remove();
    const bar = el("div", { class: "msg-actions", role: "group", "aria-label": "Message actions" });
    if (count > 1) {
      const show = function (offset) {
        return function () { if (run) return; selected[step.key] = step.siblings[index + offset].id; renderTree(); };
      };
      bar.append(el("span", { class: "versions" }, [
        el("button", { type: "button", class: "icon", "aria-label": "Previous version", disabled: index === 0,
          onclick: show(-1) }, [R.icon("chevron-left")]),
        el("span", { class: "version", text: (index + 1) + "/" + count }),
        el("button", { type: "button", class: "icon", "aria-label": "Next version", disabled: index === count - 1,
          onclick: show(1) }, [R.icon("chevron-right")]),
      ]));
    }
    bar.append(el("button", { type: "button", class: "link-button", text: "Copy",
      onclick: function (event) { R.copyText(message.content, event.currentTarget); } }));
    if (message.role === "assistant" && message.status !== "running") {
      bar.append(el("button", { type: "button", class: "link-button", text: "Regenerate",
        onclick: function () { regenerate(step); } }));
    }
    if (message.role === "user") {
      bar.append(el("button", { type: "button", class: "link-button", text: "Edit",
        onclick: function () { startEdit(node, step); } }));
    }
    node.append(bar);
  }

  function cutBranchAt(step) {
    const nodes = [...ui.messages.children];
    const from = nodes.findIndex(function (n) { return n.dataset.messageId === step.message.id; });
    if (from >= 0) nodes.slice(from).forEach(function (n) { n.remove(); });
  }

  function regenerate(step) {
    if (run || !conversationId) return;
    const answer = step.message;
    cutBranchAt(step);
    showError("");
    run = { conversationId: conversationId, query: "", bubble: assistantBubble(answer.agent), versionOf: step.key };
    startRun({ type: "query", agent_type: answer.agent || ui.agent.value, conversation_id: conversationId,
      regenerate: answer.id });
  }

  function startEdit(node, step) {
    if (run) return;
    const area = el("textarea", { class: "edit-area", rows: "3", maxlength: "32000", "aria-label": "Edit message" });
    area.value = step.message.content;
    const form = el("form", { class: "edit-form" }, [area, el("div", { class: "edit-actions" }, [
      el("button", { type: "submit", class: "primary", text: "Save and send" }),
      el("button", { type: "button", text: "Cancel", onclick: function () { renderTree(); } }),
    ])]);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const text = area.value.trim();
      if (!text || run) return;
      cutBranchAt(step);
      showError("");
      userBubble(text);
      delete selected[step.key];  // the edited question is the newest version: shown by default
      run = { conversationId: conversationId, query: text, bubble: assistantBubble(step.message.agent || ui.agent.value),
        versionOf: step.key };
      startRun({ type: "query", query: text, agent_type: step.message.agent || ui.agent.value,
        conversation_id: conversationId, edit: step.message.id });
    });
    node.replaceChildren(form);
    area.focus();
  }

  function startRun(message) {
    if (!send(message)) {
      showAlert(run.bubble, "Not connected to Relay; your message was not sent. Reconnecting…");
      finish(run, "error");
      return;
    }
    updateControls();
  }

  /* After an answer is stored: the tree gains its rows, the shown bubbles their ids and actions. */
  async function afterRun(current) {
    if (!current.conversationId || current.conversationId !== conversationId) return;
    let detail;
    try {
      // The answer's row commits just after its last event (on another instance, or behind other
      // requests' answers on this one): read again for a moment while it still shows as running.
      for (let attempt = 1; ; attempt++) {
        detail = await R.api("/api/v1/conversations/" + current.conversationId + "/");
        const stored = detail.messages.find(function (m) { return m.id === current.messageId; });
        if (!stored || stored.status !== "running" || attempt === 5) break;
        await new Promise(function (resolve) { setTimeout(resolve, 40 * attempt); });
      }
    } catch (e) { return; }
    if (run || current.conversationId !== conversationId) return;
    tree = buildTree(detail.messages);
    if (current.versionOf && current.messageId && !current.query) selected[current.versionOf] = current.messageId;
    const nodes = [...ui.messages.querySelectorAll(":scope > .msg")], steps = branch();
    if (current.versionOf || nodes.length !== steps.length) renderTree();
    else steps.forEach(function (step, i) { decorate(nodes[i], step); });
    ui.title.textContent = detail.title || "Untitled conversation";
    reloadList();
  }

  function startNew() {
    conversationId = null;
    tree = null;
    selected = {};
    markCurrent();
    ui.title.textContent = "New conversation";
    ui.messages.replaceChildren(el("li", { class: "empty-state", id: "empty-state" }, [el("p", { text: "Ask anything." })]));
  }

  ui.list.addEventListener("click", function (event) {
    const button = event.target.closest(".conversation");
    if (button && !run) loadConversation(button.dataset.id);
  });
  document.getElementById("new-conversation").addEventListener("click", function () {
    if (run) return;
    startNew();
    ui.prompt.focus();
  });
  if (search) {
    let pending = null;
    search.addEventListener("input", function () {
      clearTimeout(pending);
      pending = setTimeout(reloadList, 250);
    });
  }
  renderList();

  /* --- uploads ------------------------------------------------------------------------------ */
  const documentForm = document.getElementById("document-form");
  if (documentForm) documentForm.addEventListener("submit", async function (event) {
    event.preventDefault();
    const status = document.getElementById("document-status");
    status.textContent = "Uploading…";
    try {
      const doc = await R.api("/api/v1/documents/", { method: "POST", body: new FormData(documentForm) });
      status.textContent = "Uploaded “" + (doc.title || doc.name) + "” (" + doc.chunk_count + " passages). Ask the RAG agent about it.";
      documentForm.reset();
      const rag = [...ui.agent.options].find(function (o) { return o.value === "rag"; });
      if (rag) ui.agent.value = "rag";
    } catch (e) { status.textContent = e.message; status.classList.add("error"); }
  });

  /* An image in the message box goes to the vision agent's upload (chat_attachments.js holds it). */
  async function askVision(query, file) {
    const chosen = ui.agent.value;
    const current = { conversationId: conversationId, query: query || "Image", upload: new AbortController() };
    showError("");
    const asked = userBubble((file.name || "image") + (query ? ": " + query : ""));
    asked.prepend(R.attachment.thumbnail(file));
    // Only the vision agent reads images: say so rather than quietly answering with another agent.
    if (chosen !== "vision") {
      asked.append(el("p", { class: "msg-note", text: "Sent to " + agentTitle("vision") + " — " + agentTitle(chosen) + " can't read images" }));
    }
    current.bubble = assistantBubble("vision");
    run = current;
    updateControls();
    const form = new FormData();
    form.append("image", file, file.name || "image");
    form.append("question", query);
    if (conversationId) form.append("conversation_id", conversationId);
    try {
      const answer = await R.api("/api/v1/vision/analyze",
        { method: "POST", body: form, signal: current.upload.signal });
      const bubble = current.bubble;
      current.conversationId = answer.conversation_id;
      current.messageId = answer.message_id;
      bubble.node.dataset.messageId = answer.message_id;
      bubble.head.textContent = agentTitle(answer.agent) + " · " + answer.model;
      answer.tool_calls.forEach(function (call) { showTool(bubble, call); });
      R.render.markdown(bubble.content, answer.answer);
      answer.errors.forEach(function (e) { showAlert(bubble, e.message); });
      showMeta(bubble, Object.assign({ status: answer.status, model: answer.model, message_id: answer.message_id }, answer.usage));
      if (conversationId !== answer.conversation_id) {
        conversationId = answer.conversation_id;
        rememberConversation(conversationId, current.query, "vision");
      }
      if (run === current) run = null;
      updateControls();
      afterRun(current);
    } catch (e) {
      if (!current.upload.signal.aborted) showAlert(current.bubble, e.message);
      const status = current.upload.signal.aborted ? "cancelled" : (e.code === "budget_exceeded" ? "budget_stop" : "error");
      showMeta(current.bubble, { status: status });
      if (run === current) run = null;
      updateControls();
    }
  }

  updateControls();
  connect();
})();
