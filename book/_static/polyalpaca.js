// PolyAlpaca: outputs wider than the page's column get the class "pa-wide" (a box that scrolls
// sideways with a visible scrollbar, short enough that the scrollbar is in sight) and a hint
// above them, so that a reader whose browser hides scrollbars still sees there is more to the
// right. Re-checked when the window is resized and when a dropdown opens.
(function () {
  "use strict";
  var HINT = "pa-scroll-hint";

  function mark() {
    var boxes = document.querySelectorAll("article div.cell_output div.output, article div.cell_output div.output > pre, " +
                                          "article .pst-scrollable-table-container");
    boxes.forEach(function (box) {
      if (box.tagName === "PRE" && box.parentElement.classList.contains("pa-wide")) return;
      var wide = box.scrollWidth > box.clientWidth + 1;
      box.classList.toggle("pa-wide", wide);
      var before = box.previousElementSibling;
      var hinted = before !== null && before.classList.contains(HINT);
      if (wide && !hinted) {
        var hint = document.createElement("div");
        hint.className = HINT;
        hint.setAttribute("aria-hidden", "true");
        hint.textContent = "wider than the page: scroll sideways \u2192";
        box.parentNode.insertBefore(hint, box);
      } else if (!wide && hinted) {
        before.remove();
      }
    });
  }

  window.addEventListener("load", mark);
  if (document.fonts && document.fonts.ready) document.fonts.ready.then(mark);  // text widths change with the fonts
  window.addEventListener("resize", mark);
  document.addEventListener("toggle", mark, true);
})();
