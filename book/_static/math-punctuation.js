// A closing parenthesis or punctuation mark right after an inline formula (and an
// opening parenthesis right before one) stays on the formula's line: MathJax renders
// the formula as a box, and a browser may otherwise wrap the line between the box
// and the ")" that follows it (tests/browser/test_layout.py checks it).
(function () {
  "use strict";
  var CLOSING = /^[)\]}.,;:!?\u2019\u201d]+/;
  var OPENING = /[(\[{\u2018\u201c]+$/;

  function glue() {
    document.querySelectorAll("span.math").forEach(function (math) {
      if (!math.querySelector("mjx-container") || math.parentNode.classList.contains("math-glued")) {
        return;
      }
      var next = math.nextSibling;
      var prev = math.previousSibling;
      var after = next && next.nodeType === Node.TEXT_NODE ? CLOSING.exec(next.textContent) : null;
      var before = prev && prev.nodeType === Node.TEXT_NODE ? OPENING.exec(prev.textContent) : null;
      if (!after && !before) {
        return;
      }
      var span = document.createElement("span");
      span.className = "math-glued";
      span.style.whiteSpace = "nowrap";
      math.parentNode.insertBefore(span, math);
      if (before) {
        prev.textContent = prev.textContent.slice(0, -before[0].length);
        span.appendChild(document.createTextNode(before[0]));
      }
      span.appendChild(math);
      if (after) {
        next.textContent = next.textContent.slice(after[0].length);
        span.appendChild(document.createTextNode(after[0]));
      }
    });
  }

  function whenTypeset(tries) {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(glue);
    } else if (tries > 0) {  // MathJax loads deferred; give up after 20 s
      setTimeout(function () { whenTypeset(tries - 1); }, 50);
    }
  }
  function start() {
    if (document.querySelector("span.math")) {
      whenTypeset(400);
    }
  }
  // This script loads in the page's head, before the text it works on.
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
