// Draws the report's charts (vega-embed, from assets/vega.js), opens confusion cells,
// and lists the images inside the map's box selection. Text from the store is only
// ever set as textContent, never as HTML.
"use strict";

const MAP_LIMIT = 60; // images listed under the map at once
const views = (window.reportViews = {});

function drawCharts() {
  for (const holder of document.querySelectorAll("[data-spec]")) {
    const spec = JSON.parse(document.getElementById(holder.dataset.spec).textContent);
    const renderer = holder.dataset.map ? "canvas" : "svg";
    vegaEmbed(holder, spec, { actions: false, renderer })
      .then((result) => {
        views[holder.id] = result.view; // for the browser tests (scales, signals)
        holder.dataset.drawn = "true";
        if (holder.dataset.map) followSelection(result.view, spec.datasets.values);
      })
      .catch((error) => console.error("chart", holder.id, error));
  }
}

function followSelection(view, points) {
  showMapImages(points, null);
  view.addSignalListener("brush", (_name, box) => showMapImages(points, box));
}

function inside(point, box) {
  if (!box || !box.x || !box.y) return true;
  const [x0, x1] = [Math.min(...box.x), Math.max(...box.x)];
  const [y0, y1] = [Math.min(...box.y), Math.max(...box.y)];
  return point.x >= x0 && point.x <= x1 && point.y >= y0 && point.y <= y1;
}

function showMapImages(points, box) {
  const chosen = points.filter((p) => inside(p, box));
  const gallery = document.getElementById("map-gallery");
  gallery.replaceChildren(...chosen.slice(0, MAP_LIMIT).map(mapItem));
  const count = document.getElementById("map-count");
  count.textContent = box
    ? `${chosen.length} images in the box` + (chosen.length > MAP_LIMIT ? `, the first ${MAP_LIMIT} below` : "")
    : `drag a box on the map: its images are listed here (${points.length} points)`;
}

function mapItem(point) {
  const figure = document.createElement("figure");
  figure.className = "item";
  figure.dataset.imageId = point.id;
  figure.dataset.label = point.label;
  if (point.image) {
    const img = document.createElement("img");
    img.src = point.image;
    img.alt = point.path;
    figure.append(img);
  } else {
    const placeholder = document.createElement("div");
    placeholder.className = "placeholder";
    placeholder.textContent = point.path;
    figure.append(placeholder);
  }
  const caption = document.createElement("figcaption");
  caption.textContent = `${point.path} · ${point.label} · p ${point.prob}`;
  figure.append(caption);
  return figure;
}

function openCells() {
  for (const button of document.querySelectorAll("button.cell")) {
    button.addEventListener("click", () => {
      const table = button.closest(".truth");
      for (const open of table.querySelectorAll(".cell-gallery")) open.hidden = true;
      for (const other of table.querySelectorAll("button.cell")) other.classList.remove("open");
      document.getElementById(button.dataset.cell).hidden = false;
      button.classList.add("open");
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  openCells();
  drawCharts();
});
