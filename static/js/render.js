/* Answers as sanitized Markdown with KaTeX math and highlighted code (docs/design.md section 6).

   Relay.render.markdown(node, text)  renders now;
   Relay.render.stream(node, text)    renders the accumulated text at the next animation frame;
   Relay.render.flush(node)           renders what stream() left pending (the answer ended).

   Why each step is where it is:
   - Math is pulled out before Markdown parses the text: matrix LaTeX holds `\\`, `_` and `*`,
     which Markdown would eat as escapes and emphasis. Code (fenced and inline) is skipped, so a
     `$` in a shell snippet stays a dollar.
   - Raw HTML in an answer is shown as text (the renderer escapes it), and DOMPurify then keeps
     only an allowlist of tags, attributes and http/https/mailto URLs: two independent controls,
     the second catching anything the parser lets through. Every render sanitizes again, so a tag
     assembled from several streamed tokens meets the same gate as a whole one.
   - KaTeX and highlight.js write into nodes after sanitizing: both escape their input, KaTeX with
     trust off (no \href, \url or \htmlClass from the answer). The CSP allows inline styles, which
     KaTeX's layout uses; scripts stay 'self' only. */
(function () {
  "use strict";
  const R = window.Relay;
  const OPEN = "\uE000", CLOSE = "\uE001";  // private-use characters: never in Markdown syntax
  const PLACEHOLDER = /\uE000(\d+)\uE001/g;
  const SAFE_URL = /^(?:https?:|mailto:)/i;
  const TAGS = ["p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span", "div", "sup", "sub"];
  const ATTRS = ["href", "title", "class", "start", "align", "colspan", "rowspan"];
  const KATEX = { throwOnError: false, trust: false, strict: "ignore", maxSize: 20, maxExpand: 200 };
  const MAX_AUTO_HIGHLIGHT = 4000;  // guessing the language of a long block costs more than it gives

  // Left to right, the first alternative that matches wins: code is kept as it is, then math.
  const SCAN = new RegExp([
    /(?:^|\n) {0,3}(`{3,}|~{3,})[^\n]*(?:\n[\s\S]*?\n {0,3}\1[`~]*[ \t]*(?=\n|$)|[\s\S]*$)/.source,  // fence, maybe open
    /(`+)(?!`)[\s\S]*?[^`]\2(?!`)/.source,       // inline code
    /\\\$/.source,                                // an escaped dollar
    /\$\$([\s\S]+?)\$\$/.source,                  // display math
    /\\\[([\s\S]+?)\\\]/.source,                  // display math, LaTeX style
    /\\\(([\s\S]+?)\\\)/.source,                  // inline math, LaTeX style
    /\$(?![\s$])((?:\\[\s\S]|[^\\$\n])+?)(?<![\s\\])\$(?!\d)/.source,  // inline math; "$5 and $6" is money
    /\$\$[\s\S]*$/.source,                        // display math still streaming in: shown as text
  ].join("|"), "g");

  function extractMath(text) {
    const maths = [];
    const source = text.replace(SCAN, function (match, fence, ticks, display, bracket, paren, inline) {
      let item;
      if (display !== undefined || bracket !== undefined) item = { tex: display !== undefined ? display : bracket, display: true };
      else if (paren !== undefined || inline !== undefined) item = { tex: paren !== undefined ? paren : inline, display: false };
      else if (match.startsWith("$$")) item = { raw: match };
      else return match;
      maths.push(item);
      return (item.display || item.raw ? "\n\n" : "") + OPEN + (maths.length - 1) + CLOSE + (item.display || item.raw ? "\n\n" : "");
    });
    return { source: source, maths: maths };
  }

  function escapeHtml(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  const parser = new window.marked.Marked({
    gfm: true,
    breaks: true,  // models end lines where they mean them
    renderer: {
      // Raw HTML from the model is text to show, never markup to obey.
      html: function (token) {
        const shown = escapeHtml(token.text);
        return token.block ? "<p>" + shown + "</p>" : shown;
      },
    },
  });

  const purify = window.DOMPurify(window);  // our own instance: its hook touches nobody else's
  purify.addHook("afterSanitizeAttributes", function (node) {
    if (node.tagName !== "A") return;
    if (node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });
  const PURIFY = {
    ALLOWED_TAGS: TAGS, ALLOWED_ATTR: ATTRS, ALLOWED_URI_REGEXP: SAFE_URL, ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false, RETURN_DOM_FRAGMENT: true,
  };

  function typeset(fragment, maths) {
    const walker = document.createTreeWalker(fragment, NodeFilter.SHOW_TEXT);
    const hits = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.nodeValue.indexOf(OPEN) !== -1) hits.push(node);
    }
    hits.forEach(function (node) {
      const parts = node.nodeValue.split(PLACEHOLDER);  // text, index, text, index, ..., text
      const replacement = document.createDocumentFragment();
      parts.forEach(function (part, i) {
        if (i % 2 === 0) { if (part) replacement.append(part); return; }
        const item = maths[Number(part)];
        if (!item) { replacement.append(OPEN + part + CLOSE); return; }
        replacement.append(mathNode(item));
      });
      node.replaceWith(replacement);
    });
  }

  function mathNode(item) {
    const span = document.createElement("span");
    if (item.raw !== undefined) {
      span.className = "math-pending";
      span.textContent = item.raw;
      return span;
    }
    span.className = item.display ? "math math-display" : "math math-inline";
    try {
      window.katex.render(item.tex, span, Object.assign({ displayMode: item.display }, KATEX));
    } catch (e) {
      span.textContent = item.display ? "$$" + item.tex + "$$" : "$" + item.tex + "$";
    }
    return span;
  }

  function decorateCode(fragment) {
    fragment.querySelectorAll("pre > code").forEach(function (code) {
      const text = code.textContent;
      const match = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
      const language = match && window.hljs.getLanguage(match[1]) ? match[1] : null;
      try {
        let result = null;
        if (language) result = window.hljs.highlight(text, { language: language, ignoreIllegals: true });
        else if (text.length <= MAX_AUTO_HIGHLIGHT) result = window.hljs.highlightAuto(text);
        if (result) { code.innerHTML = result.value; code.classList.add("hljs"); }  // hljs escapes its input
      } catch (e) { code.textContent = text; }
      const pre = code.parentNode;
      const bar = R.el("div", { class: "code-bar" }, [
        R.el("span", { class: "code-lang", text: language || (match ? match[1] : "") }),
        R.el("button", {
          type: "button", class: "code-copy", "aria-label": "Copy code",
          onclick: function (event) { R.copyText(text, event.currentTarget); },
        }, [R.icon("copy"), R.el("span", { class: "label", text: "Copy" })]),
      ]);
      const box = R.el("div", { class: "code-block" });
      pre.replaceWith(box);
      box.append(bar, pre);
    });
  }

  // Wide tables scroll in their own box (static/css/layout-mobile.css), not the page; focusable so the
  // keyboard can scroll them too.
  function wrapTables(fragment) {
    fragment.querySelectorAll("table").forEach(function (table) {
      const box = R.el("div", { class: "table-scroll", tabindex: "0", role: "region", "aria-label": "Table" });
      table.replaceWith(box);
      box.append(table);
    });
  }

  function build(text) {
    const extracted = extractMath(text);
    const fragment = purify.sanitize(parser.parse(extracted.source), PURIFY);
    typeset(fragment, extracted.maths);
    decorateCode(fragment);
    wrapTables(fragment);
    return fragment;
  }

  const pending = new Map();  // node -> {text, frame}

  function markdown(node, text) {
    const waiting = pending.get(node);
    if (waiting) { cancelAnimationFrame(waiting.frame); pending.delete(node); }
    node.classList.add("md");
    let fragment;
    try { fragment = build(text || ""); } catch (e) {
      node.textContent = text || "";  // a parser failure shows the answer as plain text, never nothing
      return;
    }
    node.replaceChildren(fragment);
  }

  function stream(node, text) {
    const waiting = pending.get(node);
    if (waiting) { waiting.text = text; return; }
    const entry = { text: text, frame: 0 };
    entry.frame = requestAnimationFrame(function () {
      pending.delete(node);
      markdown(node, entry.text);
    });
    pending.set(node, entry);
  }

  function flush(node) {
    const waiting = pending.get(node);
    if (waiting) markdown(node, waiting.text);
  }

  R.render = { markdown: markdown, stream: stream, flush: flush, extractMath: extractMath };
})();
