"""AgentScaler for Drillyard: environments synthesized from tool specs, and the
three-stage trajectory filter.

* `scaler.specs` — load and check a spec set (OpenAI function schemas);
* `scaler.graph` — the tool graph (offline similarity) and its domains;
* `scaler.sampling` — initial states, valid call sequences, tasks;
* `scaler.implement` — implementations: author functions, CRUD, policy-written code;
* `scaler.synthesize` — all of it, into domain files and task files;
* `scaler.filter` — validity, state alignment, exact call match over a run;
  exports the kept trajectories as SFT data and their tasks for GRPO;
* ``python -m scaler`` — ``synth``, ``run``, ``filter`` and ``demo`` from the
  command line.

Needs ``pip install 'drillyard[scaler]'`` (networkx, jsonschema).
"""
