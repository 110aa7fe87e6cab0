"""Initial states, valid tool-call sequences and tasks for one domain.

- **Tables.** Every CRUD-shaped spec of the whole set names a table and its
  key field (`tools.stateful.crud`); a parameter refers to a table when it is
  that key field or ends with ``_<key field>`` (``from_account_id`` →
  ``accounts``). A domain's state holds every table its tools refer to.
- **Initial state.** Each table gets ``rows`` seeded rows made from its create
  spec's parameter schemas (enums, bounds, and a few name-based value lists:
  names, emails, titles, dates); a reference to another table takes one of its
  keys, so the seeded state is consistent.
- **Sequences.** A random walk over the domain's part of the tool graph (the
  next tool a neighbour, drawn by edge weight), ``min_calls``–``max_calls``
  long. Arguments: a key the call creates is fresh; a reference prefers a key
  an earlier call of the sequence touched, else an existing one; other values
  come from the schema. Each call is validated against its schema and executed
  on a copy of the state with the domain's real implementations: a sequence
  whose call fails, that changes nothing, or that was drawn before is
  rejected (and counted).
- **Tasks.** The user intent is written from the calls (each tool's
  description and its arguments, in order); with three or more calls the last
  one comes as a second user turn (the ``stateful`` environment's simulated
  user says it after the agent's first reply). The gold final state is the
  state after the gold calls.

Everything draws from one ``random.Random``: the same seed gives the same tasks.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import networkx as nx

from engine.tasks import Task
from scaler.specs import SpecEntry
from tools.stateful.crud import crud_descriptor, singular
from tools.stateful.environment import Domain
from tools.stateful.implementations import Implementation
from tools.stateful.state import JsonState, canonical, diff

PEOPLE = ["Ada Byron", "Alan Kay", "Grace Hopper", "Linus Pauling", "Mary Shelley",
          "Niels Bohr", "Rosa Parks", "Tim Berners", "Marie Curie", "Emmy Noether"]
TITLES = ["Quarterly review", "Design sync", "The Long Voyage", "Salt and Stars",
          "Budget planning", "Northern Lights", "A Quiet Garden", "Team lunch"]
WORDS = ["amber", "birch", "cobalt", "delta", "ember", "fjord", "garnet", "harbor"]


class GoldSequenceError(ValueError):
    """A task's gold call sequence does not execute; names the task, call and tool."""

    def __init__(self, task: str, index: int, tool: str, reason: str) -> None:
        super().__init__(f"task {task}: gold call {index + 1} ({tool}) failed: {reason}")
        self.task, self.index, self.tool, self.reason = task, index, tool, reason


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    key: str
    create: SpecEntry | None


@dataclass
class Tables:
    """The tables a spec set names, by table name and by key field."""

    by_name: dict[str, Table] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Sequence[SpecEntry]) -> Tables:
        out = cls()
        for e in entries:
            desc = crud_descriptor(e.spec)
            if desc is None:
                continue
            known = out.by_name.get(desc["table"])
            create = e if desc["op"] == "create" else (known.create if known else None)
            out.by_name[desc["table"]] = Table(desc["table"], desc["key"], create)
        return out

    def referenced(self, param: str) -> Table | None:
        for t in self.by_name.values():
            if param == t.key or param.endswith("_" + t.key):
                return t
        return None

    def of_tools(self, entries: Sequence[SpecEntry]) -> list[Table]:
        """Tables the tools refer to, then the tables those refer to, sorted."""
        found: dict[str, Table] = {}
        todo = [p for e in entries for p in (e.parameters.get("properties") or {})]
        for e in entries:
            desc = crud_descriptor(e.spec)
            if desc is not None:
                found[desc["table"]] = self.by_name[desc["table"]]
        while todo:
            t = self.referenced(todo.pop())
            if t is not None and t.name not in found:
                found[t.name] = t
                if t.create is not None:
                    todo += list(t.create.parameters.get("properties") or {})
        return [found[k] for k in sorted(found)]


def _prefix(table: Table) -> str:
    return singular(table.name)[:3]


def value_for(name: str, schema: dict[str, Any], rng: random.Random) -> Any:
    """A value valid for ``schema``, plausible for a parameter called ``name``."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type", "string")
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind == "integer":
        return rng.randint(int(low if low is not None else 1),
                           int(high if high is not None else 10))
    if kind == "number":
        return round(rng.uniform(float(low if low is not None else 1),
                                 float(high if high is not None else 100)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    n = name.lower()
    if "email" in n:
        return f"{rng.choice(WORDS)}{rng.randint(1, 99)}@example.com"
    if "date" in n:
        return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if n in ("name", "owner", "author") or n.endswith("_name"):
        return rng.choice(PEOPLE)
    if "title" in n:
        return rng.choice(TITLES)
    return rng.choice(WORDS)


def _fresh_key(table: Table, state: dict[str, Any]) -> str:
    rows = state.get(table.name) or {}
    n = len(rows) + 1
    while f"{_prefix(table)}-{n}" in rows:
        n += 1
    return f"{_prefix(table)}-{n}"


def seed_state(tables: Sequence[Table], rng: random.Random, rows: int = 3) -> dict[str, Any]:
    """``rows`` rows per table (referenced tables first), from the create specs."""
    state: dict[str, Any] = {}
    pending = list(tables)
    while pending:
        table = pending.pop(0)
        props = table.create.parameters.get("properties", {}) if table.create else {}
        needs = [t for p in props if p != table.key and (t := _table_of(p, tables)) is not None]
        if any(t.name not in state and t is not table for t in needs) and pending:
            pending.append(table)  # seed what it refers to first
            continue
        state[table.name] = {}
        for _ in range(rows):
            key = _fresh_key(table, state)
            row = {table.key: key}
            for p, schema in props.items():
                if p == table.key:
                    continue
                ref = _table_of(p, tables)
                if ref is not None and state.get(ref.name):
                    row[p] = rng.choice(sorted(state[ref.name]))
                else:
                    row[p] = value_for(p, schema, rng)
            state[table.name][key] = row
    return state


def _table_of(param: str, tables: Sequence[Table]) -> Table | None:
    for t in tables:
        if param == t.key or param.endswith("_" + t.key):
            return t
    return None


@dataclass
class DomainTools:
    """What sampling needs of one domain's tools."""

    entries: dict[str, SpecEntry]
    impls: dict[str, Implementation]
    tables: list[Table]
    validators: dict[str, jsonschema.protocols.Validator] = field(default_factory=dict)

    @classmethod
    def of_domain(cls, domain: Domain) -> DomainTools:
        """A domain file's tools (for checking tasks against it)."""
        return cls({}, {n: t.impl for n, t in domain.tools.items()}, [],
                   {n: t.validator for n, t in domain.tools.items()})

    def validator(self, name: str) -> jsonschema.protocols.Validator:
        if name in self.validators:
            return self.validators[name]
        params = self.entries[name].parameters
        cls = jsonschema.validators.validator_for(params, default=jsonschema.Draft202012Validator)
        validator: jsonschema.protocols.Validator = cls(params)
        return validator


def sample_arguments(tools: DomainTools, name: str, state: dict[str, Any],
                     touched: list[str], rng: random.Random) -> dict[str, Any]:
    entry = tools.entries[name]
    props: dict[str, Any] = entry.parameters.get("properties") or {}
    required = set(entry.parameters.get("required") or [])
    desc = crud_descriptor(entry.spec)
    optional = [p for p in props if p not in required]
    chosen = [p for p in props if p in required or rng.random() < 0.5]
    if desc is not None and desc["op"] == "update" and not set(chosen) & set(optional):
        chosen.append(rng.choice(optional))
    args: dict[str, Any] = {}
    used: set[str] = set()
    for p in props:
        if p not in chosen:
            continue
        table = _table_of(p, tools.tables)
        if desc is not None and desc["op"] == "create" and table is not None \
                and table.name == desc["table"] and p == table.key:
            args[p] = _fresh_key(table, state)
        elif table is not None and state.get(table.name):
            keys = [k for k in sorted(state[table.name]) if k not in used]
            mine = [k for k in touched if k in keys]
            args[p] = rng.choice(mine if mine and rng.random() < 0.6 else keys or [None])
        else:
            args[p] = value_for(p, props[p], rng)
        if isinstance(args[p], str):
            used.add(args[p])
    return {k: v for k, v in args.items() if v is not None}


async def run_calls(tools: DomainTools, initial: dict[str, Any], calls: Sequence[dict[str, Any]],
                    task_id: str) -> tuple[dict[str, Any], int]:
    """Execute gold calls on a copy of ``initial``; the final state and how many
    calls changed it. `GoldSequenceError` names the task, call and tool."""
    state = JsonState()
    state.reset(initial)
    writes = 0
    for i, call in enumerate(calls):
        name = call["name"]
        if name not in tools.impls:
            raise GoldSequenceError(task_id, i, name, "no such tool in the domain")
        errors = list(tools.validator(name).iter_errors(call["arguments"]))
        if errors:
            raise GoldSequenceError(task_id, i, name, f"bad arguments: {errors[0].message}")
        before = state.snapshot()
        try:
            await tools.impls[name](state, dict(call["arguments"]))
        except Exception as exc:
            raise GoldSequenceError(task_id, i, name, f"{type(exc).__name__}: {exc}") from exc
        writes += bool(diff(before, state.snapshot()))
    return state.snapshot(), writes


async def verify_tasks(domain: Domain, tasks: Sequence[Task]) -> tuple[list[Task], list[str]]:
    """The tasks whose gold calls execute on their initial state and end in their
    gold final state, and a problem (naming the task, call and tool) for each other."""
    if domain.state != "json":
        return list(tasks), []
    tools = DomainTools.of_domain(domain)
    good: list[Task] = []
    problems: list[str] = []
    for task in tasks:
        truth = task.ground_truth if isinstance(task.ground_truth, dict) else {}
        try:
            final, _ = await run_calls(tools, task.metadata.get("initial_state") or {},
                                       truth.get("calls") or [], task.id)
        except GoldSequenceError as exc:
            problems.append(f"{exc}; task left out")
            continue
        if canonical(final) != canonical(truth.get("final_state")):
            problems.append(f"task {task.id}: its gold calls do not end in its gold final "
                            "state; task left out")
            continue
        good.append(task)
    return good, problems


def task_line(task: Task) -> dict[str, Any]:
    """A task as one line of a task file (`engine.load_tasks`)."""
    return {"id": task.id, "prompt": task.prompt, "answer": task.ground_truth,
            "metadata": task.metadata}


def _walk(graph: nx.Graph, names: list[str], length: int, rng: random.Random) -> list[str]:
    seq = [rng.choice(names)]
    while len(seq) < length:
        here = seq[-1]
        nbrs = sorted(n for n in graph.neighbors(here) if n in names and n != here)
        if not nbrs:
            break
        weights = [graph.edges[here, n]["weight"] for n in nbrs]
        seq.append(rng.choices(nbrs, weights=weights)[0])
    return seq


def sentence(entry: SpecEntry, arguments: dict[str, Any]) -> str:
    what = str(entry.spec["function"]["description"]).split(". ")[0].rstrip(".")
    what = what[:1].lower() + what[1:]
    if not arguments:
        return what
    parts = ", ".join(f"{k.replace('_', ' ')} {json.dumps(v)}" for k, v in arguments.items())
    return f"{what} ({parts})"


def turn_split(calls: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The gold calls by user turn: with three or more, the last is a turn of its own."""
    calls = list(calls)
    return [calls[:-1], calls[-1:]] if len(calls) >= 3 else [calls]


def intent(tools: DomainTools, calls: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """The user's first message and later turns for a gold call sequence."""
    turns = [[sentence(tools.entries[c["name"]], c["arguments"]) for c in t]
             for t in turn_split(calls)]
    lines = turns[0]
    later = [f"One more thing: please also {t[0]}." for t in turns[1:]]
    if len(lines) == 1:
        first = f"Please {lines[0]}."
    else:
        first = "Please do the following, in order: " + "; ".join(
            f"{i + 1}. {line}" for i, line in enumerate(lines)) + "."
    return first, later


@dataclass
class SampleReport:
    tasks: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1


async def sample_tasks(domain: str, graph: nx.Graph, tools: DomainTools, rng: random.Random, *,
                       tasks: int = 8, min_calls: int = 2, max_calls: int = 4,
                       rows: int = 3, attempts: int = 40) -> tuple[list[Task], SampleReport]:
    """Up to ``tasks`` tasks for a domain (``attempts`` draws per task at most)."""
    report = SampleReport()
    names = sorted(tools.entries)
    initial = seed_state(tools.tables, rng, rows)
    out: list[Task] = []
    seen: set[str] = set()
    for _ in range(tasks * attempts):
        if len(out) >= tasks:
            break
        walk = _walk(graph, names, rng.randint(min_calls, max_calls), rng)
        if len(walk) < min_calls:
            report.reject("walk too short")
            continue
        state = canonical(initial)
        calls: list[dict[str, Any]] = []
        touched: list[str] = []
        for name in walk:
            args = sample_arguments(tools, name, state, touched, rng)
            calls.append({"name": name, "arguments": args})
            touched += [v for v in args.values() if isinstance(v, str)]
            try:
                state, _ = await run_calls(tools, state, calls[-1:], "?")
            except GoldSequenceError as exc:
                report.reject(f"a call failed ({exc.reason.split(':')[0]})")
                break
        else:
            key = json.dumps(calls, sort_keys=True)
            if key in seen:
                report.reject("drawn before")
                continue
            task_id = f"{domain}-{len(out):03d}"
            final, writes = await run_calls(tools, initial, calls, task_id)
            if not writes:
                report.reject("changes nothing")
                continue
            seen.add(key)
            first, later = intent(tools, calls)
            out.append(Task(task_id, first, {"calls": calls, "final_state": final},
                            metadata={"domain": domain, "initial_state": initial,
                                      "user_turns": later}))
    report.tasks = len(out)
    return out, report
