// The explanation page: reads GET /feature-set once, then POST /score with "explain": true.
// Every number drawn comes from those two answers; nothing is recomputed here except the
// sum that checks bias + Σ linear + Σ contribution against the logit.
"use strict";

const DEFAULT_CANDIDATES = 20; // popular movies put in the candidates box
const PROBABILITY_DIGITS = 4;
const WEIGHT_DIGITS = 3;
const TERM_DIGITS = 3;

const state = {
  userFields: new Set(document.body.dataset.userFields.split(/\s+/).filter(Boolean)),
  historyField: document.body.dataset.historyField, // what the user watched (history versions)
  movies: new Map(), // movie_id -> {title, year, genres} from /feature-set
  response: null, // the last /score answer
  selected: null, // movie_id whose explanation is shown
  featureSet: null, // the /feature-set answer
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("data-")) node.setAttribute(name, String(value));
    else node[name] = value;
  }
  node.append(...children);
  return node;
}

// --- talking to the API --------------------------------------------------------------------

class ProblemError extends Error {}

// With API keys configured (AFM_API_KEYS), the API answers 401 without one: the page asks
// for a key, keeps it for this tab (sessionStorage) and sends it as X-API-Key.
const KEY_STORAGE = "afm-ctr-api-key";
let askingForKey = null; // one prompt shared by the calls answered 401 together

function askForKey() {
  askingForKey ??= new Promise((resolve) => {
    const key = (window.prompt("This service needs an API key. It is kept for this tab only.") || "").trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    askingForKey = null;
    resolve(key);
  });
  return askingForKey;
}

/** The JSON body of a 2xx answer; otherwise throws with the problem's title and detail.
 *  A 401 asks for a key once and tries again with it. */
async function api(path, options = {}, keyJustGiven = false) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const headers = { ...options.headers, ...(key ? { "X-API-Key": key } : {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new ProblemError(`The service did not answer ${path} (${error.message}).`);
  }
  if (response.status === 401 && !keyJustGiven) {
    sessionStorage.removeItem(KEY_STORAGE); // none, or one the service no longer accepts
    if (await askForKey()) return api(path, options, true);
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const title = (body && body.title) || `HTTP ${response.status}`;
    const detail = body && body.detail ? `: ${body.detail}` : "";
    throw new ProblemError(`${title}${detail}`);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// --- formatting ----------------------------------------------------------------------------

const fixed = (x, digits) => Number(x).toFixed(digits);
const signed = (x, digits) => (x >= 0 ? "+" : "−") + Math.abs(x).toFixed(digits);
const featureText = (f) => `${f.field}: ${f.label}`;

function movieTitle(score) {
  const feature = score.features && score.features.find((f) => f.field === "movie_id");
  const info = state.movies.get(score.movie_id);
  if (feature && feature.label !== feature.value) return feature.label;
  return (info && info.title) || `Movie ${score.movie_id}`;
}

function movieGenres(score) {
  const feature = score.features && score.features.find((f) => f.field === "genres");
  if (feature && feature.value) return feature.label;
  const info = state.movies.get(score.movie_id);
  return info && info.genres ? info.genres.split("|").join(", ") : "";
}

/**
 * Background for an attention weight, diverging around an equal share of the pairs: white is
 * exactly 1 / pairs, blue more, grey less (red and green mean a contribution's sign, below).
 * The darkest blue is the largest weight and the darkest grey the smallest, unless they are within a quarter of an equal share of it (so
 * nearly uniform attention stays nearly white). Returns the colour and its strength in [0, 1].
 */
function weightColour(weight, equalShare, smallest, largest) {
  const floor = equalShare / 4;
  const above = weight >= equalShare;
  const t = above
    ? (weight - equalShare) / Math.max(largest - equalShare, floor)
    : (equalShare - weight) / Math.max(equalShare - smallest, floor);
  const to = above ? [8, 48, 107] : [96, 96, 96];
  const rgb = [255, 255, 255].map((c, i) => Math.round(c + (to[i] - c) * t));
  return { colour: `rgb(${rgb.join(",")})`, strength: t };
}

// --- the form ------------------------------------------------------------------------------

/** The /score body from the form. Only the syntax is checked here (whole numbers); the
 * service checks the bounds and its problem detail is shown. */
function readQuery() {
  const integer = /^-?\d+$/;
  const userText = $("user-id").value.trim();
  if (!integer.test(userText)) throw new ProblemError("The user id must be a whole number.");
  const ids = $("candidates").value.split(/[\s,;]+/).filter(Boolean);
  if (ids.length === 0) throw new ProblemError("Enter at least one candidate movie id.");
  const bad = ids.find((id) => !integer.test(id));
  if (bad !== undefined) throw new ProblemError(`“${bad}” is not a movie id (a whole number).`);
  const topText = $("top-k").value.trim();
  if (topText && !integer.test(topText)) throw new ProblemError("Top k must be a whole number.");
  return {
    user_id: Number(userText),
    movie_ids: ids.map(Number),
    top_k: topText ? Number(topText) : null,
    explain: true,
    log: false, // people inspecting the model: no impression shown to a viewer
  };
}

async function rank() {
  showError("");
  let query;
  try {
    query = readQuery();
  } catch (error) {
    showError(error.message);
    return;
  }
  $("score-button").disabled = true;
  document.body.dataset.state = "loading";
  try {
    const response = await api("score", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(query),
    });
    state.response = response;
    const ids = response.scores.map((s) => s.movie_id);
    if (!ids.includes(state.selected)) state.selected = ids.length ? ids[0] : null;
    render();
    document.body.dataset.state = "ready";
  } catch (error) {
    state.response = null;
    render();
    showError(error.message);
    document.body.dataset.state = "error";
  } finally {
    $("score-button").disabled = false;
  }
}

// --- drawing -------------------------------------------------------------------------------

function render() {
  renderStatus();
  renderUser();
  renderRanking();
  renderExplanation();
}

function renderStatus() {
  const response = state.response;
  const parts = [];
  if (response) parts.push(`model version ${response.model_version}`);
  if (state.featureSet) {
    const fs = state.featureSet;
    // The dataset's name; not where the server read it from ("ml-1m at /data/ml-1m").
    parts.push(`features: ${(fs.source || "unnamed feature set").split(" at ")[0]}`);
    if (fs.users != null) parts.push(`${fs.users} users, ${fs.movies} movies`);
  }
  if (parts.length) $("status").textContent = parts.join(" · ");
}

function renderUser() {
  const list = $("user-features");
  list.replaceChildren();
  const response = state.response;
  $("user-unknown").hidden = !response || response.user_known;
  const first = response && response.scores[0];
  $("user-heading").textContent = response ? `User ${response.user_id}` : "User";
  if (!first || !first.features) return;
  for (const f of first.features.filter((f) => state.userFields.has(f.field))) {
    const value = el("dd", { text: f.label });
    if (f.label !== f.value && f.value !== "") value.append(el("span", { class: "raw", text: ` (${f.value})` }));
    if (!f.known) value.append(el("span", { class: "oov", text: " not in training data" }));
    list.append(el("div", { "data-field": f.field }, el("dt", { text: f.field }), value));
  }
  if (first.watched) list.append(el("div", { "data-field": state.historyField }, el("dt", { text: state.historyField }), watchedByRecency(first.watched)));
}

/** What a history version's user watched, most recent first (the same for every candidate). */
function watchedByRecency(watched) {
  const value = el("dd");
  if (!watched.length) {
    value.textContent = "nothing yet";
    return value;
  }
  const list = el("ol", { class: "watched" });
  for (const movie of [...watched].sort((a, b) => a.position - b.position)) {
    const item = el("li", { "data-movie-id": movie.movie_id, title: movie.title, text: movie.title });
    if (!movie.known) item.append(el("span", { class: "oov", text: " not in training data" }));
    list.append(item);
  }
  value.append(list);
  return value;
}

function renderRanking() {
  const body = $("ranking").querySelector("tbody");
  body.replaceChildren();
  if (!state.response) return;
  state.response.scores.forEach((score, index) => {
    const row = el(
      "tr",
      {
        "data-movie-id": score.movie_id,
        "data-probability": score.probability,
        tabIndex: 0,
        class: score.movie_id === state.selected ? "selected" : "",
      },
      el("td", { class: "rank", text: String(index + 1) }),
      el("td", { class: "title", text: movieTitle(score), title: movieTitle(score) }),
      el("td", { class: "genres", text: movieGenres(score), title: movieGenres(score) }),
      el("td", { class: "num probability", text: fixed(score.probability, PROBABILITY_DIGITS) }),
    );
    const unknown = (state.response.unknown_movies || []).includes(score.movie_id);
    const note = unknown ? " unknown: no features, not in training; listed last" : " new";
    if (!score.movie_known) row.querySelector(".title").append(el("span", { class: "oov", text: note }));
    row.setAttribute("aria-selected", String(score.movie_id === state.selected));
    row.addEventListener("click", () => select(score.movie_id));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        select(score.movie_id);
      }
    });
    body.append(row);
  });
}

function select(movieId) {
  state.selected = movieId;
  renderRanking();
  renderExplanation();
}

function renderExplanation() {
  const section = $("explanation");
  const score = state.response && state.response.scores.find((s) => s.movie_id === state.selected);
  section.hidden = !score || !score.pairs;
  if (section.hidden) return;
  section.dataset.movieId = score.movie_id;
  $("explanation-title").textContent = `${movieTitle(score)} — p(click) ${fixed(score.probability, PROBABILITY_DIGITS)}`;
  const movieFields = score.features.filter((f) => !state.userFields.has(f.field) && f.field !== state.historyField);
  $("movie-facts").textContent = movieFields
    .map((f) => featureText(f) + (f.known ? "" : " (not in training data)"))
    .join(" · ");
  renderHeatmap(score);
  renderWatched(score);
  renderTerms(score);
}

/** A history version's attention over the watched movies for this candidate, most first,
 *  coloured as the heatmap: white an equal share, blue more, grey less. */
function renderWatched(score) {
  const figure = $("watched-figure");
  figure.hidden = !score.watched;
  if (figure.hidden) return;
  const list = $("watched-attention");
  list.replaceChildren();
  const watched = score.watched;
  if (!watched.length) {
    $("watched-caption").textContent = "Nothing watched yet: the model reads an unknown history.";
    return;
  }
  const weights = watched.map((m) => m.weight);
  const [smallest, largest] = [Math.min(...weights), Math.max(...weights)];
  const equalShare = 1 / watched.length;
  for (const movie of watched) {
    const { colour, strength } = weightColour(movie.weight, equalShare, smallest, largest);
    const weight = el("span", { class: strength > 0.55 ? "weight dark" : "weight", text: fixed(movie.weight, WEIGHT_DIGITS) });
    weight.style.background = colour;
    const item = el(
      "li",
      {
        "data-movie-id": movie.movie_id,
        "data-weight": movie.weight,
        "data-position": movie.position,
        title: `${movie.title}\n${recency(movie.position)}, weight ${fixed(movie.weight, 4)}`,
      },
      weight,
      el("span", { class: "title", text: movie.title }),
    );
    if (!movie.known) item.append(el("span", { class: "oov", text: " not in training data" }));
    list.append(item);
  }
  $("watched-caption").textContent =
    `How much ${movieTitle(score)} attends to each movie the user watched; the ` +
    `${watched.length} weights sum to 1. White: an equal share (${fixed(equalShare, WEIGHT_DIGITS)}); ` +
    "blue: more, grey: less. Hover a movie for how recently it was watched.";
}

/** "the most recently watched", "the 2nd most recently watched", … (position 0 is the latest). */
function recency(position) {
  if (position === 0) return "the most recently watched";
  const n = position + 1;
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
  return `the ${n}${suffix} most recently watched`;
}

function renderHeatmap(score) {
  const features = score.features;
  const pairs = new Map();
  for (const pair of score.pairs) {
    pairs.set(pair.fields.join("|"), pair);
    pairs.set([...pair.fields].reverse().join("|"), pair);
  }
  const weights = score.pairs.map((p) => p.weight);
  const [smallest, largest] = [Math.min(...weights), Math.max(...weights)];
  const equalShare = 1 / score.pairs.length;
  const table = $("heatmap");
  table.replaceChildren();
  const head = el("tr", {}, el("th", { class: "corner" }));
  for (const f of features) {
    head.append(el("th", { scope: "col", class: "col", title: featureText(f) }, el("span", { text: featureText(f) })));
  }
  table.append(el("thead", {}, head));
  const body = el("tbody");
  for (const row of features) {
    const tr = el("tr", {}, el("th", { scope: "row", class: "row", title: featureText(row), text: featureText(row) }));
    for (const col of features) {
      const pair = row.field === col.field ? null : pairs.get(`${row.field}|${col.field}`);
      if (!pair) {
        tr.append(el("td", { class: "empty" }));
        continue;
      }
      const cell = el("td", {
        "data-pair": pair.fields.join("|"),
        "data-weight": pair.weight,
        title: `${featureText(row)} × ${featureText(col)}\nweight ${fixed(pair.weight, 4)}, ` +
          `contribution ${signed(pair.contribution, TERM_DIGITS)} to the logit`,
        text: fixed(pair.weight, WEIGHT_DIGITS),
      });
      const { colour, strength } = weightColour(pair.weight, equalShare, smallest, largest);
      cell.style.background = colour;
      if (strength > 0.55) cell.classList.add("dark");
      tr.append(cell);
    }
    body.append(tr);
  }
  table.append(body);
  $("heatmap-caption").textContent =
    `Attention weight of each field pair; the ${score.pairs.length} weights sum to 1. ` +
    `White: an equal share (${fixed(equalShare, WEIGHT_DIGITS)}); blue: more, grey: less ` +
    `(largest ${fixed(largest, WEIGHT_DIGITS)}, smallest ${fixed(smallest, WEIGHT_DIGITS)}). ` +
    "Hover a cell for its contribution to the logit.";
}

function renderTerms(score) {
  const byField = new Map(score.features.map((f) => [f.field, f]));
  const linear = Object.entries(score.linear).map(([field, value]) => ({
    kind: "linear",
    key: field,
    label: byField.has(field) ? featureText(byField.get(field)) : field,
    value,
  }));
  const pairs = [...score.pairs]
    .sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution))
    .map((p) => ({
      kind: "pair",
      key: p.fields.join("|"),
      label: `${p.fields[0]}: ${p.labels[0]} × ${p.fields[1]}: ${p.labels[1]}`,
      value: p.contribution,
    }));
  const rows = [{ kind: "bias", key: "bias", label: "bias w₀", value: score.bias }];
  const largest = Math.max(...[...rows, ...linear, ...pairs].map((r) => Math.abs(r.value)), 1e-12);
  const body = $("terms").querySelector("tbody");
  body.replaceChildren();
  const group = (title) => body.append(el("tr", { class: "group" }, el("th", { colSpan: 3, text: title })));
  const add = (row) => {
    const bar = el("div", { class: `bar ${row.value >= 0 ? "pos" : "neg"}` });
    bar.style.width = `${(50 * Math.abs(row.value)) / largest}%`;
    body.append(
      el(
        "tr",
        { "data-term": row.kind, "data-key": row.key, "data-value": row.value },
        el("td", { class: "label", title: row.label, text: row.label }),
        el("td", { class: "barcell" }, bar),
        el("td", { class: "num", text: signed(row.value, TERM_DIGITS) }),
      ),
    );
  };
  rows.forEach(add);
  group("Each field on its own (linear terms)");
  linear.forEach(add);
  group("Each pair: attention × interaction (largest first)");
  pairs.forEach(add);

  const sumLinear = linear.reduce((s, r) => s + r.value, 0);
  const sumPairs = pairs.reduce((s, r) => s + r.value, 0);
  const total = score.bias + sumLinear + sumPairs;
  const agrees = Math.abs(total - score.logit) < 1e-3;
  const check = $("check");
  check.dataset.logit = score.logit;
  check.dataset.sum = total;
  check.dataset.agrees = String(agrees);
  check.className = agrees ? "ok" : "bad";
  const terms = [
    ["bias", signed(score.bias, TERM_DIGITS)],
    ["+"],
    ["Σ linear", signed(sumLinear, TERM_DIGITS)],
    ["+"],
    ["Σ pairs", signed(sumPairs, TERM_DIGITS)],
    ["="],
    ["logit", signed(score.logit, TERM_DIGITS)],
    ["→"],
    ["p = σ(logit)", fixed(score.probability, PROBABILITY_DIGITS)],
  ];
  const names = el("tr");
  const values = el("tr");
  for (const [name, value] of terms) {
    names.append(el("th", { text: value === undefined ? "" : name }));
    values.append(el("td", { class: value === undefined ? "op" : "num", text: value === undefined ? name : value }));
  }
  values.append(el("td", { class: "verdict", text: agrees ? "✓" : `✗ terms add up to ${signed(total, TERM_DIGITS)}` }));
  check.replaceChildren(el("table", {}, names, values));
}

// --- start ---------------------------------------------------------------------------------

async function loadFeatureSet() {
  try {
    const fs = await api("feature-set");
    state.featureSet = fs;
    for (const movie of fs.popular_movies || []) state.movies.set(movie.movie_id, movie);
    const picker = $("sample-users");
    for (const user of fs.sample_users || []) picker.append(el("option", { value: String(user), text: `User ${user}` }));
    if (!$("user-id").value && fs.sample_users && fs.sample_users.length) {
      $("user-id").value = String(fs.sample_users[0]);
      picker.value = String(fs.sample_users[0]);
    }
    if (!$("candidates").value) {
      $("candidates").value = (fs.popular_movies || [])
        .slice(0, DEFAULT_CANDIDATES)
        .map((m) => m.movie_id)
        .join(", ");
    }
    renderStatus();
    return true;
  } catch (error) {
    $("status").textContent = "No feature set information.";
    showError(`Could not read the feature set (${error.message}). Type a user id and movie ids.`);
    return false;
  }
}

async function start() {
  $("query").addEventListener("submit", (event) => {
    event.preventDefault();
    rank();
  });
  $("sample-users").addEventListener("change", (event) => {
    if (!event.target.value) return;
    $("user-id").value = event.target.value;
    rank();
  });
  const loaded = await loadFeatureSet();
  if (loaded && $("user-id").value && $("candidates").value) await rank();
  else document.body.dataset.state = "idle";
}

start();
