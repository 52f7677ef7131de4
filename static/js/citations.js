/* Citation chips for answers that cite document passages ([n]).
   Relay.citations.decorate(node, passages) turns each [n] of a rendered answer into a chip naming
   the document, and the answer's "Sources:" line into a row of chips under it. A chip is a link
   to the document page at the cited part (/documents/<id>/#chunk-<n>); hovering or focusing it
   shows the passage in a tooltip (role="tooltip", tied by aria-describedby; Escape hides it).
   passages: the search_documents tool's data.passages, [{document_id, title, chunk, snippet}],
   in citation order. The answer text itself keeps plain [n]: only the browser draws chips. */
(function () {
  "use strict";
  const R = window.Relay = window.Relay || {};
  const CITE = /\[(\d{1,2})\]/g, HAS_CITE = /\[\d{1,2}\]/;
  const SKIP = "a, code, pre, .katex, .cite";
  let serial = 0;

  function make(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function documentUrl(passage) {
    return "/documents/" + encodeURIComponent(passage.document_id) + "/#chunk-" + encodeURIComponent(passage.chunk);
  }

  function chip(n, passage) {
    const id = "cite-tip-" + (++serial);
    const wrap = make("span", "cite");
    const link = make("a", "cite-chip");
    link.href = documentUrl(passage);
    link.setAttribute("aria-describedby", id);
    link.dataset.citation = String(n);
    link.append(make("span", "cite-number", String(n)), make("span", "cite-title", passage.title || "Document"));
    const tip = make("span", "cite-tip");
    tip.id = id;
    tip.setAttribute("role", "tooltip");
    tip.hidden = true;
    tip.append(make("span", "cite-tip-title", (passage.title || "Document") + ", part " + (Number(passage.chunk) + 1)),
               make("span", "cite-tip-text", passage.snippet || ""));
    function show() { tip.hidden = false; }
    function hide() { tip.hidden = true; }
    link.addEventListener("mouseenter", show);
    link.addEventListener("focus", show);
    link.addEventListener("mouseleave", function () { if (document.activeElement !== link) hide(); });
    link.addEventListener("blur", hide);
    link.addEventListener("keydown", function (event) { if (event.key === "Escape") hide(); });
    wrap.append(link, tip);
    return wrap;
  }

  function textNodes(node) {
    const walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT, {
      acceptNode: function (text) {
        if (!HAS_CITE.test(text.data)) return NodeFilter.FILTER_REJECT;
        return text.parentElement && text.parentElement.closest(SKIP) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT;
      },
    });
    const found = [];
    while (walker.nextNode()) found.push(walker.currentNode);
    return found;
  }

  function chipText(text, passages, cited) {
    const fragment = document.createDocumentFragment();
    let last = 0;
    text.data.replace(CITE, function (match, digits, offset) {
      const n = Number(digits), passage = passages[n - 1];
      if (!passage) return match;
      fragment.append(text.data.slice(last, offset), chip(n, passage));
      cited.add(n);
      last = offset + match.length;
      return match;
    });
    fragment.append(text.data.slice(last));
    text.replaceWith(fragment);
  }

  function sourcesLine(node) {
    return [...node.querySelectorAll("p")].find(function (p) { return /^\s*Sources:/.test(p.textContent); });
  }

  function decorate(node, passages) {
    if (!node || !passages || !passages.length || node.dataset.cited) return;
    node.dataset.cited = "true";
    const sources = sourcesLine(node);
    if (sources) sources.remove();  // replaced by the row of chips below
    const cited = new Set();
    textNodes(node).forEach(function (text) { chipText(text, passages, cited); });
    if (sources) {
      (sources.textContent.match(CITE) || []).forEach(function (match) {
        const n = Number(match.slice(1, -1));
        if (passages[n - 1]) cited.add(n);
      });
    }
    if (!cited.size) return;
    const row = make("div", "cite-sources");
    row.setAttribute("role", "group");
    row.setAttribute("aria-label", "Sources");
    row.append(make("span", "cite-sources-label", "Sources"));
    [...cited].sort(function (a, b) { return a - b; }).forEach(function (n) { row.append(chip(n, passages[n - 1])); });
    node.append(row);
  }

  /* The passages a message's tool calls returned (live events or stored tool_calls), in order. */
  function passagesOf(calls) {
    return (calls || []).reduce(function (all, call) {
      return call && call.data && call.data.passages ? all.concat(call.data.passages) : all;
    }, []);
  }

  R.citations = { decorate: decorate, passagesOf: passagesOf };
})();
