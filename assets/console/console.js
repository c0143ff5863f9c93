// keyward console: the only script the pages load (CSP script-src 'self', no inline script).
// - forms with data-confirm ask for confirmation before they are sent;
// - buttons with data-copy="ID" copy the text of the input ID to the clipboard;
// - a page holding an element with data-refresh="SECONDS" reloads itself after that long (the
//   audit page while the whole-chain check runs).
// The pages work without it, except that nothing asks for confirmation or reloads by itself.
"use strict";

(function () {
  var marked = document.querySelector("[data-refresh]");
  var seconds = marked ? parseInt(marked.getAttribute("data-refresh"), 10) : 0;
  if (seconds > 0) {
    window.setTimeout(function () { window.location.reload(); }, seconds * 1000);
  }
})();

document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

document.addEventListener("click", function (event) {
  var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
  if (!button) {
    return;
  }
  var input = document.getElementById(button.getAttribute("data-copy"));
  if (!input) {
    return;
  }
  var done = function (ok) {
    button.textContent = ok ? "Copied" : "Select the key and copy it";
    button.setAttribute("aria-live", "polite");
  };
  input.focus();
  input.select();
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(input.value).then(function () { done(true); }, function () {
      done(document.execCommand && document.execCommand("copy"));
    });
  } else {
    done(document.execCommand && document.execCommand("copy"));
  }
});
