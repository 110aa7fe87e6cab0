"""Stateful tool environments: tools as functions over a per-rollout state.

* `tools.stateful.state` — the state (a JSON document or an in-memory SQLite
  database), fresh per reset, one transaction per call, snapshots and diffs;
* `tools.stateful.crud` — implementations for create/read/update/delete specs;
* `tools.stateful.implementations` — author functions, CRUD, and untrusted
  (policy-written) code run in the bubblewrap jail;
* `tools.stateful.environment` — the ``stateful`` environment over a domain;
* `tools.stateful.scoring` — the ``state_alignment`` and ``call_match`` scorers.

Needs ``pip install 'drillyard[scaler]'`` (jsonschema; networkx for synthesis).
"""
