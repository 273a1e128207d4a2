// Optional comfort: filter findings by severity, sort tables by a column.
// The report reads the same without it.
(function () {
  "use strict";
  var filter = document.getElementById("filter");
  if (filter) {
    filter.hidden = false;
    filter.addEventListener("change", function (event) {
      var box = event.target;
      var section = document.querySelector('#findings section[data-severity="' + box.dataset.severity + '"]');
      if (section) { section.hidden = !box.checked; }
    });
  }
  function key(cell) {
    if (cell.dataset.sort !== undefined) { return Number(cell.dataset.sort); }  // an order the report chose (verdicts: failing first)
    var text = cell.textContent.trim();
    var number = Number(text);
    return text !== "" && !isNaN(number) ? number : text.toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (header, column) {
      header.title = "Sort by this column";
      header.addEventListener("click", function () {
        var body = table.tBodies[0];
        var ascending = header.dataset.order !== "asc";
        table.querySelectorAll("thead th").forEach(function (th) { delete th.dataset.order; });
        header.dataset.order = ascending ? "asc" : "desc";
        Array.from(body.rows)
          .sort(function (a, b) {
            var x = key(a.cells[column]), y = key(b.cells[column]);
            if (typeof x !== typeof y) { x = String(x); y = String(y); }
            return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
          })
          .forEach(function (row) { body.appendChild(row); });
      });
    });
  });
})();
