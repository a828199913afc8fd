// vitx serve: the maps: one card per method, one map per explained row (a detector: per object), on one colour
// scale, with the method's leaderboard scores, downloads and, for a bi-modal model, the words coloured by relevance.
import {element} from "./dom.js";

const SHOWN = 4;   // leaderboard scores shown on a card before the rest fold away

/** The card of one method's ``result`` in a job; ``target``: the line naming what was explained, or null. */
export function mapCard(result, target, rows) {
  const row = rows.find((method) => method.name === result.method) || {};
  const card = element("article", {class: "map-card", "data-method": result.method},
    element("header", {}, element("h3", {text: result.method, title: row.summary || ""}),
      element("span", {class: "muted", text: [row.family, row.cost].filter(Boolean).join(" · ")})));
  if (target) card.append(element("p", {class: "target", text: target}));
  if (result.error) {
    card.append(element("p", {class: "reason", text: result.error}));
    return card;
  }
  const maps = element("div", {class: "maps"});
  for (const map of result.maps) {
    maps.append(element("figure", {},
      element("img", {src: map.overlay, alt: `${result.method}: ${map.label}`, title: map.label}),
      element("figcaption", {}, element("span", {class: "label", text: map.label}),
        element("a", {href: map.png, download: "", text: "PNG"}),
        element("a", {href: map.overlay, download: "", text: "overlay"}),
        element("a", {href: map.npy, download: "", text: "NPY"}))));
  }
  card.append(maps);
  if (result.text) card.append(textRelevance(result.text));
  card.append(scoreTable(result.scores || row.scores, row.scores_command, row.scores_better || {}));
  return card;
}

function textRelevance(text) {
  const line = element("p", {class: "tokens", title: "relevance of each word of the text"});
  const top = Math.max(1e-9, ...text.relevance);
  text.tokens.forEach((token, i) => {
    const word = element("span", {text: token, title: text.relevance[i].toFixed(3)});
    word.style.setProperty("--relevance", String(Math.max(0, text.relevance[i]) / top));
    line.append(word, " ");
  });
  return line;
}

const ARROWS = {higher: " ↑", lower: " ↓"};   // which way is better, as the leaderboard's headers say

function scoreTable(scores, command, better) {
  if (!scores || !Object.keys(scores).length) {
    return element("p", {class: "scores muted", text: "no leaderboard scores for this model"});
  }
  const rows = Object.entries(scores).map(([metric, value]) => element("tr", {},
    element("th", {text: metric.replaceAll("_", " ") + (ARROWS[better[metric]] || ""),
                   title: better[metric] ? `${better[metric]} is better` : ""}),
    element("td", {text: typeof value === "number" ? String(Number(value.toFixed(3))) : String(value)})));
  const tooltip = command ? `from the leaderboard: ${command}` : "from the leaderboard";
  const box = element("div", {class: "score-box", title: tooltip},
    element("span", {class: "muted", text: "leaderboard"}),
    element("table", {class: "scores"}, ...rows.slice(0, SHOWN)));
  if (rows.length > SHOWN) {
    box.append(element("details", {}, element("summary", {text: `${rows.length - SHOWN} more scores`}),
      element("table", {class: "scores"}, ...rows.slice(SHOWN))));
  }
  return box;
}
