// neco explore: nearest-patch retrieval in the browser. Reads the JSON written by neco.explore.page and
// computes cosines on the reduced features exactly as `page_vectors` / `nearest_patches` do there
// (same operations in the same order), so the marked patches equal the Python reference.
(function () {
  "use strict";

  var data = JSON.parse(document.getElementById("neco-data").textContent);
  var N = data.images.length;
  var GH = data.grid[0];
  var GW = data.grid[1];
  var P = GH * GW;
  var labels = data.labels ? Int32Array.from(data.labels.values) : null;
  var labelNames = data.labels ? data.labels.names : [];
  var SVG = "http://www.w3.org/2000/svg";
  // Colour ramp of the heat map (dark = least similar, bright = most similar).
  var RAMP = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
  var MARK = { plain: "#ffd400", match: "#19c37d", mismatch: "#ff3b30", unlabelled: "#b0b0b0" };

  function decode(text) {
    var binary = atob(text);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  // Unit float32 vectors from the int8 codes: value = code * scale, divided by its norm.
  function unitVectors(codes, scales) {
    var d = scales.length;
    var count = codes.length / d;
    var out = new Float32Array(codes.length);
    var values = new Float64Array(d);
    for (var i = 0; i < count; i++) {
      var o = i * d;
      var squared = 0;
      for (var j = 0; j < d; j++) {
        var v = codes[o + j] * scales[j];
        values[j] = v;
        squared = squared + v * v;
      }
      var norm = Math.sqrt(squared);
      for (j = 0; j < d; j++) out[o + j] = norm > 0 ? values[j] / norm : 0;
    }
    return out;
  }

  var backbones = data.backbones.map(function (b) {
    var bytes = decode(b.codes);
    var codes = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.length);
    var d = b.scales.length;
    return {
      name: b.name,
      dim: b.dim,
      energy: b.energy,
      d: d,
      count: codes.length / d,
      vec: unitVectors(codes, b.scales),
      pca: decode(b.pca),
      sims: new Float64Array(codes.length / d),
      top: [],
      lo: 0,
      hi: 1,
      precision: null,
    };
  });
  var letters = ["A", "B"];

  var state = {
    image: 0,
    row: Math.floor(GH / 2),
    col: Math.floor(GW / 2),
    locked: false,
    view: "heat",
    k: Math.max(1, data.k),
    sameImage: false,
    follow: true,
    labelColours: true,
    opacity: 0.7,
  };

  // --- similarity and retrieval ------------------------------------------------------------------

  function similarities(b, query) {
    var d = b.d;
    var v = b.vec;
    var q = new Float64Array(d);
    for (var j = 0; j < d; j++) q[j] = v[query * d + j];
    for (var i = 0; i < b.count; i++) {
      var o = i * d;
      var s = 0;
      for (j = 0; j < d; j++) s = s + v[o + j] * q[j];
      b.sims[i] = s;
    }
  }

  // Top-k by cosine among the candidates (other images, or also the own image without the query); ties:
  // the lower index, because candidates are visited in index order and only a strictly higher cosine
  // moves ahead of an earlier one.
  function nearest(b, query, k, sameImage) {
    var start = Math.floor(query / P) * P;
    var end = start + P;
    var sims = b.sims;
    var top = [];
    for (var i = 0; i < b.count; i++) {
      if (sameImage ? i === query : i >= start && i < end) continue;
      var s = sims[i];
      if (top.length === k && !(s > sims[top[k - 1]])) continue;
      var at = top.length;
      while (at > 0 && sims[top[at - 1]] < s) at--;
      top.splice(at, 0, i);
      if (top.length > k) top.pop();
    }
    return top;
  }

  function precision(query, top) {
    if (!labels || labels[query] < 0) return null;
    var valid = 0;
    var same = 0;
    for (var t = 0; t < top.length; t++) {
      var label = labels[top[t]];
      if (label < 0) continue;
      valid++;
      if (label === labels[query]) same++;
    }
    return valid ? { value: same / valid, same: same, valid: valid } : null;
  }

  function update() {
    var query = state.image * P + state.row * GW + state.col;
    backbones.forEach(function (b) {
      similarities(b, query);
      b.top = nearest(b, query, state.k, state.sameImage);
      var lo = Infinity;
      var hi = -Infinity;
      for (var i = 0; i < b.count; i++) {
        var s = b.sims[i];
        if (s < lo) lo = s;
        if (i !== query && s > hi) hi = s;
      }
      b.lo = lo;
      b.hi = hi > lo ? hi : lo + 1e-6;
      b.precision = precision(query, b.top);
    });
    return query;
  }

  // --- page ----------------------------------------------------------------------------------------

  function element(tag, attrs, parent) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(x, digits) {
    return x === null || x === undefined ? "n/a" : x.toFixed(digits);
  }

  var grid = document.getElementById("grid");
  var cards = [];
  var tiles = []; // tiles[image][backbone] = {canvas, ctx, image, svg}
  data.images.forEach(function (info, i) {
    var card = element("figure", { class: "card", "data-image": String(i) }, grid);
    var row = element("div", { class: "tiles" }, card);
    var perBackbone = backbones.map(function (b, bi) {
      var tile = element(
        "div",
        {
          class: "tile",
          role: "button",
          tabindex: bi === 0 ? "0" : "-1",
          "aria-label": info.name + ", " + b.name,
          "data-image": String(i),
          "data-backbone": String(bi),
        },
        row
      );
      element("img", { src: info.src, alt: info.name, draggable: "false" }, tile);
      var canvas = element("canvas", { width: String(GW), height: String(GH) }, tile);
      var svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", "0 0 " + GW + " " + GH);
      svg.setAttribute("preserveAspectRatio", "none");
      tile.appendChild(svg);
      if (backbones.length > 1) element("span", { class: "badge", text: letters[bi] + ": " + b.name }, tile);
      bindTile(tile, i);
      return { canvas: canvas, ctx: canvas.getContext("2d"), pixels: null, svg: svg };
    });
    element("figcaption", { text: info.name, title: info.name }, card);
    cards.push(card);
    tiles.push(perBackbone);
  });

  var panel = document.getElementById("neighbours-panel");
  var lists = backbones.map(function (b, bi) {
    var section = element("section", {}, panel);
    var heading = element("h2", { id: "neighbours-title-" + bi }, section);
    var list = element("ol", { id: "neighbours-" + bi, "data-backbone": String(bi) }, section);
    list.setAttribute("aria-labelledby", heading.id);
    return { heading: heading, list: list };
  });

  function cellAt(tile, event) {
    var box = tile.getBoundingClientRect();
    var col = Math.floor(((event.clientX - box.left) / box.width) * GW);
    var row = Math.floor(((event.clientY - box.top) / box.height) * GH);
    return { row: Math.min(GH - 1, Math.max(0, row)), col: Math.min(GW - 1, Math.max(0, col)) };
  }

  function bindTile(tile, image) {
    tile.addEventListener("pointermove", function (event) {
      if (state.locked || !state.follow || event.pointerType === "touch") return;
      var cell = cellAt(tile, event);
      if (cell.row !== state.row || cell.col !== state.col || image !== state.image) {
        pick(image, cell.row, cell.col, false);
      }
    });
    // `click` also fires for a tap, so touch screens pick with the same handler.
    tile.addEventListener("click", function (event) {
      var cell = cellAt(tile, event);
      var same = image === state.image && cell.row === state.row && cell.col === state.col;
      pick(image, cell.row, cell.col, !(same && state.locked));
    });
    // Keyboard focus (Tab) moves the pick to this image; a pointer focus is followed by its click.
    tile.addEventListener("focus", function () {
      if (image !== state.image && tile.matches(":focus-visible")) pick(image, state.row, state.col, true);
    });
  }

  function pick(image, row, col, locked) {
    state.image = image;
    state.row = row;
    state.col = col;
    state.locked = locked;
    schedule();
  }

  var pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () {
      pending = false;
      render();
    });
  }

  function rampColour(t, out) {
    var x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
    var i = Math.min(RAMP.length - 2, Math.floor(x));
    var f = x - i;
    for (var c = 0; c < 3; c++) out[c] = Math.round(RAMP[i][c] + f * (RAMP[i + 1][c] - RAMP[i][c]));
  }

  function drawOverlay(b, bi, image) {
    var tile = tiles[image][bi];
    if (!tile.pixels) tile.pixels = tile.ctx.createImageData(GW, GH);
    var px = tile.pixels.data;
    var alpha = state.view === "image" ? 0 : Math.round(255 * state.opacity);
    var colour = [0, 0, 0];
    var range = b.hi - b.lo;
    for (var p = 0; p < P; p++) {
      var index = image * P + p;
      if (state.view === "pca") {
        colour[0] = b.pca[3 * index];
        colour[1] = b.pca[3 * index + 1];
        colour[2] = b.pca[3 * index + 2];
      } else {
        rampColour((b.sims[index] - b.lo) / range, colour);
      }
      px[4 * p] = colour[0];
      px[4 * p + 1] = colour[1];
      px[4 * p + 2] = colour[2];
      px[4 * p + 3] = alpha;
    }
    tile.ctx.putImageData(tile.pixels, 0, 0);
  }

  function rect(svg, row, col, colour, width) {
    var r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", String(col));
    r.setAttribute("y", String(row));
    r.setAttribute("width", "1");
    r.setAttribute("height", "1");
    r.setAttribute("fill", "none");
    r.setAttribute("stroke", colour);
    r.setAttribute("stroke-width", String(width));
    r.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(r);
    return r;
  }

  function markColour(query, index) {
    if (!labels || !state.labelColours) return { colour: MARK.plain, kind: "plain" };
    if (labels[index] < 0 || labels[query] < 0) return { colour: MARK.unlabelled, kind: "unlabelled" };
    return labels[index] === labels[query]
      ? { colour: MARK.match, kind: "match" }
      : { colour: MARK.mismatch, kind: "mismatch" };
  }

  function labelName(index) {
    if (!labels) return "";
    var label = labels[index];
    return label < 0 ? "unlabelled" : labelNames[label] || "class " + label;
  }

  function render() {
    var query = update();
    cards.forEach(function (card, i) {
      card.classList.toggle("query", i === state.image);
    });
    backbones.forEach(function (b, bi) {
      for (var i = 0; i < N; i++) {
        drawOverlay(b, bi, i);
        var svg = tiles[i][bi].svg;
        while (svg.firstChild) svg.removeChild(svg.firstChild);
      }
      b.top.forEach(function (index, rank) {
        var image = Math.floor(index / P);
        var cell = index - image * P;
        var mark = markColour(query, index);
        var r = rect(tiles[image][bi].svg, Math.floor(cell / GW), cell % GW, mark.colour, 2);
        r.setAttribute("class", "neighbour " + mark.kind);
        r.setAttribute("data-rank", String(rank + 1));
      });
      var qsvg = tiles[state.image][bi].svg;
      rect(qsvg, state.row, state.col, "#000", 4).setAttribute("class", "query-outer");
      rect(qsvg, state.row, state.col, "#fff", 2).setAttribute("class", "query");
      renderList(b, bi, query);
    });
    renderStatus(query);
    document.body.setAttribute("data-ready", "1");
  }

  function renderList(b, bi, query) {
    var entry = lists[bi];
    var title = (backbones.length > 1 ? letters[bi] + ": " : "") + b.name + " (top " + state.k + ")";
    if (b.precision) title += ", precision " + fmt(b.precision.value, 2);
    entry.heading.textContent = title;
    var list = entry.list;
    while (list.firstChild) list.removeChild(list.firstChild);
    b.top.forEach(function (index) {
      var image = Math.floor(index / P);
      var cell = index - image * P;
      var row = Math.floor(cell / GW);
      var col = cell % GW;
      var kind = markColour(query, index).kind;
      var text = data.images[image].name + " (" + row + ", " + col + ") cos " + fmt(b.sims[index], 3);
      if (labels) text += " " + labelName(index);
      var item = element(
        "li",
        {
          class: kind,
          text: text,
          "data-image": String(image),
          "data-row": String(row),
          "data-col": String(col),
          "data-sim": String(b.sims[index]),
        },
        list
      );
      item.addEventListener("click", function () {
        cards[image].scrollIntoView({ block: "nearest" });
      });
    });
  }

  function renderStatus(query) {
    var status = document.getElementById("status");
    while (status.firstChild) status.removeChild(status.firstChild);
    var where = data.images[state.image].name + ", patch (" + state.row + ", " + state.col + ")";
    if (labels) where += ", label " + labelName(query);
    element(
      "span",
      { text: where + (state.locked ? " (picked; Esc or click it again to follow the pointer)" : "") + ". " },
      status
    );
    backbones.forEach(function (b, bi) {
      var text = (backbones.length > 1 ? letters[bi] + ": " : "") + b.name;
      text += ": cosine " + fmt(b.lo, 2) + " to " + fmt(b.hi, 2);
      if (labels) {
        text += b.precision
          ? ", precision@" + state.k + " " + fmt(b.precision.value, 2) +
            " (" + b.precision.same + "/" + b.precision.valid + ")"
          : ", precision n/a";
      }
      element("span", { class: "backbone", "data-backbone": String(bi), text: text }, status);
    });
  }

  function renderMeta() {
    var names = backbones
      .map(function (b, bi) {
        var prefix = backbones.length > 1 ? letters[bi] + " = " : "";
        return prefix + b.name + " (" + b.dim + " dims, cosine on " + b.d + " PCA dims keeping " +
          fmt(100 * b.energy, 1) + "%)";
      })
      .join(backbones.length > 1 ? " vs " : "");
    document.getElementById("meta").textContent =
      names + "; input " + data.input_size[0] + "x" + data.input_size[1] + " px, patch " + data.patch +
      " (" + GH + "x" + GW + " patches), " + N + " images, k = " + state.k;
  }

  // --- controls --------------------------------------------------------------------------------------

  var kInput = document.getElementById("k");
  kInput.value = String(state.k);
  kInput.max = String(Math.max(1, (N - 1) * P));
  function setK(k) {
    state.k = Math.max(1, Math.min(Number(kInput.max), Math.round(k) || 1));
    kInput.value = String(state.k);
    renderMeta();
    schedule();
  }
  kInput.addEventListener("change", function () {
    setK(Number(kInput.value));
  });

  function setView(view) {
    state.view = view;
    document.querySelectorAll('input[name="view"]').forEach(function (radio) {
      radio.checked = radio.value === view;
    });
    schedule();
  }
  document.querySelectorAll('input[name="view"]').forEach(function (radio) {
    radio.addEventListener("change", function () {
      if (radio.checked) setView(radio.value);
    });
  });

  var sameInput = document.getElementById("same-image");
  sameInput.addEventListener("change", function () {
    state.sameImage = sameInput.checked;
    schedule();
  });
  var followInput = document.getElementById("follow");
  followInput.addEventListener("change", function () {
    state.follow = followInput.checked;
  });
  if (labels) {
    document.getElementById("label-toggle").hidden = false;
    var labelInput = document.getElementById("label-colours");
    labelInput.addEventListener("change", function () {
      state.labelColours = labelInput.checked;
      schedule();
    });
  }
  var opacityInput = document.getElementById("opacity");
  opacityInput.addEventListener("input", function () {
    state.opacity = Number(opacityInput.value);
    schedule();
  });
  var sizeInput = document.getElementById("tile-size");
  sizeInput.addEventListener("input", function () {
    document.documentElement.style.setProperty("--tile", sizeInput.value + "px");
  });
  var helpButton = document.getElementById("help-button");
  helpButton.addEventListener("click", function () {
    var help = document.getElementById("help");
    help.hidden = !help.hidden;
    helpButton.setAttribute("aria-expanded", String(!help.hidden));
  });

  function moveImage(step) {
    var image = (state.image + step + N) % N;
    pick(image, state.row, state.col, true);
    cards[image].scrollIntoView({ block: "nearest" });
  }

  document.addEventListener("keydown", function (event) {
    var tag = event.target && event.target.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    var moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (moves[event.key]) {
      var row = Math.min(GH - 1, Math.max(0, state.row + moves[event.key][0]));
      var col = Math.min(GW - 1, Math.max(0, state.col + moves[event.key][1]));
      pick(state.image, row, col, true);
    } else if (event.key === "]" || event.key === "PageDown") {
      moveImage(1);
    } else if (event.key === "[" || event.key === "PageUp") {
      moveImage(-1);
    } else if (event.key === "v") {
      var views = ["heat", "pca", "image"];
      setView(views[(views.indexOf(state.view) + 1) % views.length]);
    } else if (event.key === "p") {
      setView(state.view === "pca" ? "heat" : "pca");
    } else if (event.key === "+" || event.key === "=") {
      setK(state.k + 1);
    } else if (event.key === "-") {
      setK(state.k - 1);
    } else if (event.key === "o") {
      sameInput.checked = !sameInput.checked;
      state.sameImage = sameInput.checked;
      schedule();
    } else if (event.key === "Escape") {
      state.locked = false;
      schedule();
    } else {
      return;
    }
    event.preventDefault();
  });

  // For debugging from the console; the page itself does not depend on it.
  window.necoExplore = { state: state, pick: pick, backbones: backbones };
  renderMeta();
  render();
})();
