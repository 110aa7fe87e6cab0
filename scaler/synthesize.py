"""Environment synthesis, end to end: specs → tool graph → domains → tasks.

    report = await synthesize("scaler/data/specs", "out/", seed=0)

writes, per domain, ``out/domains/<name>.json`` (the ``stateful``
environment's domain file) and ``out/tasks/<name>.jsonl`` (a task file for
`engine.load_tasks`: prompt, gold ``{calls, final_state}`` as the answer, the
initial state and later user turns in the metadata), plus ``out/report.json``
with the figures: specs read and kept, implementations by kind, the graph,
and per domain its tools, tasks and rejected draws. Bad specs, tools without
an implementation, tools that fail on every sampled call and sequences that
do not execute are reported and left out; the rest goes on.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.policy.base import Policy
from scaler.graph import describe, domains, tool_graph
from scaler.implement import (
    ImplementationRejected,
    Made,
    known_implementation,
    write_implementation,
)
from scaler.sampling import (
    DomainTools,
    GoldSequenceError,
    Tables,
    run_calls,
    sample_arguments,
    sample_tasks,
    seed_state,
    task_line,
)
from scaler.specs import SpecEntry, load_specs
from tools.stateful.implementations import build_implementation


@dataclass
class DomainReport:
    name: str
    tools: list[str]
    dropped: list[str]
    tasks: int
    rejected: dict[str, int]


@dataclass
class SynthesisReport:
    seed: int
    specs_read: int = 0
    specs_kept: int = 0
    spec_problems: list[str] = field(default_factory=list)
    implementations: dict[str, int] = field(default_factory=dict)
    tool_problems: list[str] = field(default_factory=list)
    graph: dict[str, Any] = field(default_factory=dict)
    domains: list[DomainReport] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return sum(d.tasks for d in self.domains)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tasks": self.tasks}


def domain_name(tools: DomainTools, taken: set[str]) -> str:
    counts = Counter(t.name for t in tools.tables)
    for e in tools.entries.values():
        for p in e.parameters.get("properties") or {}:
            for t in tools.tables:
                if p == t.key or p.endswith("_" + t.key):
                    counts[t.name] += 1
    base = min(counts, key=lambda n: (-counts[n], n)) if counts else "domain"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}{i}", i + 1
    return name


async def _implement(entry: SpecEntry, state: dict[str, Any], tools: DomainTools,
                     policy: Policy | None, rng: random.Random) -> Made:
    made = known_implementation(entry)
    if made is not None:
        return made
    if policy is None:
        raise ImplementationRejected(entry.name, "no implementation: not CRUD-shaped, no "
                                     "x-implementation, and no policy to write one")
    probes = [sample_arguments(tools, entry.name, state, [], rng) for _ in range(4)]
    return await write_implementation(policy, entry, state, probes)


async def _probe(tools: DomainTools, graph: Any, name: str, state: dict[str, Any],
                 rng: random.Random, n: int = 16) -> str | None:
    """None when a sampled call of the tool succeeds (alone, or after a call of a
    neighbour, for tools that need one first: return after lend), else the last failure."""
    last = ""
    nbrs = sorted(m for m in graph.neighbors(name) if m in tools.impls and m != name)
    for i in range(n):
        calls, touched = [], []
        if i % 2 and nbrs:
            first = rng.choices(nbrs, [graph.edges[name, m]["weight"] for m in nbrs])[0]
            args = sample_arguments(tools, first, state, [], rng)
            calls.append({"name": first, "arguments": args})
            touched = [v for v in args.values() if isinstance(v, str)]
        calls.append({"name": name, "arguments": sample_arguments(tools, name, state, touched,
                                                                  rng)})
        try:
            await run_calls(tools, state, calls, f"probe of {name}")
            return None
        except GoldSequenceError as exc:
            if exc.tool == name and exc.index == len(calls) - 1:
                last = exc.reason
    return last or "its sampled calls never ran"


async def synthesize(specs: str | Path, out: str | Path, *, seed: int = 0,
                     tasks_per_domain: int = 8, policy: Policy | None = None,
                     min_weight: float = 0.08, resolution: float = 1.0,
                     rows: int = 4) -> SynthesisReport:
    """Synthesize domains and tasks from a spec set into ``out`` (see the module doc)."""
    out = Path(out)
    spec_set = load_specs(specs)
    report = SynthesisReport(seed, spec_set.read, len(spec_set.tools), list(spec_set.problems))
    graph = tool_graph(spec_set.tools, min_weight)
    report.graph = describe(graph)
    tables = Tables.of(spec_set.tools)
    kinds: Counter[str] = Counter()
    taken: set[str] = set()
    (out / "domains").mkdir(parents=True, exist_ok=True)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    for index, members in enumerate(domains(graph, seed, resolution=resolution)):
        rng = random.Random(seed * 1_000_003 + index)
        entries = {n: graph.nodes[n]["entry"] for n in members}
        tools = DomainTools(entries, {}, tables.of_tools(list(entries.values())))
        state = seed_state(tools.tables, rng, rows)
        made: dict[str, Made] = {}
        dropped: list[str] = []
        for name, entry in entries.items():  # known implementations first: probes need them
            try:
                found = known_implementation(entry)
            except ImplementationRejected as exc:
                report.tool_problems.append(str(exc))
                dropped.append(name)
                continue
            if found is not None:
                made[name] = found
                tools.impls[name] = build_implementation(name, found.impl)
        for name, entry in entries.items():
            if name in made or name in dropped:
                continue
            try:
                made[name] = await _implement(entry, state, tools, policy, rng)
                tools.impls[name] = build_implementation(name, made[name].impl)
            except ImplementationRejected as exc:
                report.tool_problems.append(str(exc))
                dropped.append(name)
        for name in sorted(made):
            failure = await _probe(tools, graph, name, state, rng)
            if failure is not None:
                report.tool_problems.append(f"tool {name}: every sampled call failed "
                                            f"(last: {failure}); left out")
                dropped.append(name)
                del made[name], tools.impls[name]
        for name in dropped:
            entries.pop(name, None)
        if len(made) < 2:
            continue
        tools.entries = {n: entries[n] for n in sorted(made)}
        name = domain_name(tools, taken)
        taken.add(name)
        kinds.update(m.kind for m in made.values())
        tasks, sampled = await sample_tasks(name, graph, tools, rng, tasks=tasks_per_domain,
                                            rows=rows)
        doc = {"name": name, "state": "json",
               "tools": [{"spec": entries[n].spec, "impl": made[n].impl} for n in sorted(made)]}
        (out / "domains" / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        lines = [json.dumps(task_line(t)) for t in tasks]
        (out / "tasks" / f"{name}.jsonl").write_text("".join(x + "\n" for x in lines))
        report.domains.append(DomainReport(name, sorted(made), sorted(dropped), len(tasks),
                                           sampled.rejected))
    report.implementations = dict(sorted(kinds.items()))
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report
