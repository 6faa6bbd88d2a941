// The search page of `meter-batch serve`: text or image in, a grid of the nearest stored
// images out; a click shows an image's predictions and searches its neighbours.
"use strict";

const grid = document.getElementById("grid");
const message = document.getElementById("message");
const chosen = document.getElementById("chosen");

function k() { return document.getElementById("k").value || "20"; }

function say(text) { message.textContent = text; }

async function answer(response) {
  const body = await response.json();
  if (!response.ok) { throw new Error(body.error || response.statusText); }
  return body;
}

function show(result) {
  grid.replaceChildren();
  for (const hit of result.hits) {
    const item = document.createElement("li");
    const picture = document.createElement("img");
    picture.src = `/thumbs/${hit.image_id}`;
    picture.alt = hit.path;
    picture.loading = "lazy";
    const path = document.createElement("div");
    path.className = "path";
    path.textContent = hit.path;  // text, never HTML: paths are the user's data
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = `#${hit.rank}  ${hit.score.toFixed(4)}`;
    item.append(picture, path, score);
    item.addEventListener("click", () => choose(hit.image_id));
    grid.append(item);
  }
  say(`${result.hits.length} images in ${(result.seconds * 1000).toFixed(0)} ms (commit ${result.commit})`);
}

async function run(request) {
  try { show(await answer(await request)); } catch (error) { say(error.message); }
}

async function choose(imageId) {
  try {
    const info = await answer(await fetch(`/api/images/${imageId}`));
    const rows = info.predictions.map((p) =>
      `<tr><td></td><td></td><td>${p.prob.toFixed(3)}</td></tr>`);
    chosen.innerHTML = `<strong></strong> <a href="/images/${imageId}">original</a>
      <table><tr><th>label set</th><th>label</th><th>prob</th></tr>${rows.join("")}</table>`;
    chosen.querySelector("strong").textContent = info.path;
    chosen.querySelectorAll("tr").forEach((row, i) => {
      if (i === 0) { return; }
      const p = info.predictions[i - 1];
      row.children[0].textContent = p.label_set;
      row.children[1].textContent = p.label;
    });
    chosen.hidden = false;
  } catch (error) { say(error.message); }
  run(fetch(`/api/images/${imageId}/neighbours?k=${k()}`));
}

document.getElementById("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = document.getElementById("text").value;
  run(fetch(`/api/search?text=${encodeURIComponent(text)}&k=${k()}`));
});

document.getElementById("image").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) { run(fetch(`/api/search/image?k=${k()}`, { method: "POST", body: file })); }
});

fetch("/api/status").then(answer).then((status) => {
  document.getElementById("status").textContent =
    `${status.store}: ${status.images} images, commit ${status.commit}, model ${status.model}`;
  document.getElementById("report-link").hidden = !status.report;
}).catch((error) => say(error.message));
