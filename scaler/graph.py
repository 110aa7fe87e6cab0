"""The tool graph and its domains.

Nodes are tools; an edge links two tools whose parameters overlap, weighted
by a similarity that runs offline (no model, nothing downloaded):

- **parameter similarity** — each tool's parameter features are its full
  parameters as ``name:type`` (so a shared ``order_id:string`` counts whole)
  plus the word tokens of each parameter name (``from_account_id`` →
  ``from``, ``account``, ``id``; camelCase and snake_case split, lower-cased,
  a plural ``s`` dropped). Features are weighted by smoothed inverse document
  frequency over the spec set, ``idf(f) = ln((1 + N) / (1 + df(f))) + 1``
  (N tools, df tools having f), so a token every tool has (``id``) weighs
  little. The similarity is the weighted Jaccard index
  ``Σ idf(A ∩ B) / Σ idf(A ∪ B)``.
- **text similarity** — the cosine of TF-IDF vectors over the word tokens of
  each tool's name and description (same idf, tf = raw count, English stop
  words removed): a hand formula rather than scikit-learn, which would be a
  heavy dependency for a few lines.

``weight = 0.75 · parameter + 0.25 · text``; an edge needs a parameter
similarity above zero (the tools share a parameter feature) and ``weight ≥
min_weight``. Domains are the graph's communities by Louvain modularity
(`networkx.community.louvain_communities`, seeded, so deterministic for a
seed); a community with fewer than ``min_size`` tools is no domain.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from scaler.specs import SpecEntry

PARAM_WEIGHT = 0.75
TEXT_WEIGHT = 0.25
STOP = frozenset({
    "a", "an", "the", "of", "to", "for", "in", "on", "at", "by", "with", "and", "or", "is",
    "are", "be", "this", "that", "it", "its", "as", "from", "given", "one", "all", "any",
    "their", "them", "which", "who", "whose",
})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lower-case word tokens: camelCase and snake_case split, a plural ``s`` dropped."""
    out = []
    for word in _WORD.findall(_CAMEL.sub(" ", text).lower()):
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


def param_features(entry: SpecEntry) -> set[str]:
    feats: set[str] = set()
    for name, schema in (entry.parameters.get("properties") or {}).items():
        kind = schema.get("type", "any") if isinstance(schema, dict) else "any"
        feats.add(f"{name.lower()}:{kind}")
        feats.update(tokens(name))
    return feats


def text_tokens(entry: SpecEntry) -> list[str]:
    fn = entry.spec["function"]
    return [t for t in tokens(f"{fn['name']} {fn.get('description', '')}") if t not in STOP]


def idf(docs: Sequence[Iterable[str]]) -> dict[str, float]:
    df: Counter[str] = Counter()
    for doc in docs:
        df.update(set(doc))
    n = len(docs)
    return {f: math.log((1 + n) / (1 + c)) + 1 for f, c in df.items()}


def weighted_jaccard(a: set[str], b: set[str], weights: dict[str, float]) -> float:
    union = sum(weights[f] for f in a | b)
    return sum(weights[f] for f in a & b) / union if union else 0.0


def tfidf_cosine(a: list[str], b: list[str], weights: dict[str, float]) -> float:
    va = {t: c * weights[t] for t, c in Counter(a).items()}
    vb = {t: c * weights[t] for t, c in Counter(b).items()}
    dot = sum(v * vb.get(t, 0.0) for t, v in va.items())
    norm = math.sqrt(sum(v * v for v in va.values())) * math.sqrt(sum(v * v for v in vb.values()))
    return dot / norm if norm else 0.0


@dataclass(frozen=True, slots=True)
class Edge:
    a: str
    b: str
    param: float
    text: float

    @property
    def weight(self) -> float:
        return PARAM_WEIGHT * self.param + TEXT_WEIGHT * self.text


def tool_graph(entries: Sequence[SpecEntry], min_weight: float = 0.08) -> nx.Graph:
    """The weighted tool graph (see the module doc); nodes carry their `SpecEntry`."""
    params = {e.name: param_features(e) for e in entries}
    texts = {e.name: text_tokens(e) for e in entries}
    pw, tw = idf(list(params.values())), idf(list(texts.values()))
    graph = nx.Graph()
    for e in entries:
        graph.add_node(e.name, entry=e)
    names = [e.name for e in entries]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            edge = Edge(a, b, weighted_jaccard(params[a], params[b], pw),
                        tfidf_cosine(texts[a], texts[b], tw))
            if edge.param > 0 and edge.weight >= min_weight:
                graph.add_edge(a, b, weight=edge.weight, param=edge.param, text=edge.text)
    return graph


def domains(graph: nx.Graph, seed: int, min_size: int = 2,
            resolution: float = 1.0) -> list[list[str]]:
    """Communities of the tool graph (Louvain, seeded), each sorted, largest first;
    ties broken by name so the order is deterministic too."""
    found = nx.community.louvain_communities(graph, weight="weight", seed=seed,
                                             resolution=resolution)
    groups = [sorted(c) for c in found if len(c) >= min_size]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def describe(graph: nx.Graph) -> dict[str, Any]:
    return {"tools": graph.number_of_nodes(), "edges": graph.number_of_edges(),
            "isolated": sorted(nx.isolates(graph))}
