// The two things on the token page that need JavaScript: the copy button and the countdown.
(function () {
  var copy = document.getElementById("copy");
  if (copy) {
    copy.addEventListener("click", function () {
      var field = document.getElementById(copy.dataset.target);
      var done = function () { document.getElementById("copied").textContent = "Copied."; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () {
          field.select(); document.execCommand("copy"); done();
        });
      } else {
        field.select(); document.execCommand("copy"); done();
      }
    });
  }
  var expiry = document.getElementById("expiry");
  var countdown = document.getElementById("countdown");
  if (expiry && countdown) {
    var exp = parseInt(expiry.dataset.exp, 10);
    var tick = function () {
      var left = Math.max(0, exp - Math.floor(Date.now() / 1000));
      countdown.textContent = left > 0
        ? Math.floor(left / 60) + " min " + (left % 60) + " s left"
        : "expired: get a new token";
    };
    tick();
    setInterval(tick, 1000);
  }
})();
