// The deployments table, or a deployment's state block, refreshes itself while something in it changes: poll its JSON every few seconds,
// swap the block only when it differs, stop once it settles (or after an error). No reload, no framework.
(function () {
  "use strict";
  var block = document.getElementById("live");
  if (!block || !window.fetch) { return; }
  var url = block.getAttribute("data-status-url");
  var delay = 3000, maxDelay = 30000, shown = null;
  function poll() {
    fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (data) {
        // Compare with the last answer, not innerHTML (which the browser normalises): no swap when nothing changed.
        if (data.html !== shown) { block.innerHTML = data.html; }
        shown = data.html;
        block.setAttribute("data-settled", data.settled ? "true" : "false");
        if (!data.settled) { window.setTimeout(poll, delay); }
      })
      .catch(function () {
        delay = Math.min(delay * 2, maxDelay);  // the server is restarting or the session ended: back off
        if (delay < maxDelay) { window.setTimeout(poll, delay); }
      });
  }
  if (block.getAttribute("data-settled") !== "true") { window.setTimeout(poll, delay); }
}());
