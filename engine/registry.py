"""Plug-ins found by name: backends, environments, scorers.

Built-ins are listed as ``"module:attribute"`` strings and imported only when
first asked for; third-party plug-ins come from the entry-point groups
``drillyard.backends``, ``drillyard.environments`` and ``drillyard.scorers``;
an app can `register` its own at run time. Asking for a name that is unknown,
or whose extra is not installed, raises `PluginNotFound` with the fix.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from engine.errors import PluginNotFound

# name -> (target, extra that provides its dependencies, or None)
_BUILTINS: dict[str, dict[str, tuple[str, str | None]]] = {
    "backends": {
        "inprocess": ("backends.inprocess:InProcessBackend", None),
        "subprocess": ("backends.subprocess:SubprocessBackend", None),
        "kubernetes": ("backends.kubernetes:KubernetesBackend", "k8s"),
        "ray": ("backends.ray:RayBackend", "ray"),
    },
    "environments": {
        "arithmetic": ("engine.envs.arithmetic:ArithmeticEnvironment", None),
        "code": ("tools.code:LocalCodeEnvironment", None),
        "code.local": ("tools.code:LocalCodeEnvironment", None),
        "code.e2b": ("tools.code:E2BCodeEnvironment", "e2b"),
        "browser": ("tools.browser:BrowserEnvironment", "browser"),
        "mcp": ("tools.mcp:MCPEnvironment", "mcp"),
        "gaia": ("gaia.environment:GaiaEnvironment", "gaia"),
        "secret_word": ("engine.training.secret_env:SecretWordEnvironment", None),
        "stateful": ("tools.stateful.environment:StatefulEnvironment", "scaler"),
        "bfcl": ("bfcl.environment:BFCLEnvironment", "bfcl"),
    },
    "scorers": {
        "exact": ("engine.scoring:exact_match", None),
        "numeric": ("engine.scoring:numeric_match", None),
        "arithmetic": ("engine.envs.arithmetic:score", None),
        "gaia": ("gaia.scorer:gaia_score", None),
        "secret_share": ("engine.training.secret_env:secret_share", None),
        "state_alignment": ("tools.stateful.scoring:state_alignment", "scaler"),
        "call_match": ("tools.stateful.scoring:call_match", "scaler"),
        "bfcl": ("bfcl.scorer:bfcl_score", "bfcl"),
    },
}
_REGISTERED: dict[str, dict[str, Any]] = {kind: {} for kind in _BUILTINS}


def register(kind: str, name: str, obj: Any) -> None:
    """Register an object (a class, a factory, a function) under a name."""
    _check_kind(kind)
    _REGISTERED[kind][name] = obj


def registered(kind: str, name: str) -> Any | None:
    """What `register` put under ``name`` in this process, else None."""
    _check_kind(kind)
    return _REGISTERED[kind].get(name)


def declare(kind: str, name: str, target: str, extra: str | None = None) -> None:
    """Declare a lazily imported plug-in: ``target`` is ``"module:attribute"``,
    imported on first use; ``extra`` names the drillyard extra that installs
    its dependencies, for the error message when they are missing."""
    _check_kind(kind)
    if ":" not in target:
        raise ValueError(f"target must look like 'module:attribute', got {target!r}")
    _BUILTINS[kind][name] = (target, extra)


def names(kind: str) -> list[str]:
    """Every name known for a kind: built-in, entry point or registered."""
    _check_kind(kind)
    found = set(_BUILTINS[kind]) | set(_REGISTERED[kind])
    found |= {ep.name for ep in entry_points(group=f"drillyard.{kind}")}
    return sorted(found)


def resolve(kind: str, name: str) -> Any:
    """Return the object registered as ``name`` for ``kind``, importing it lazily."""
    _check_kind(kind)
    if name in _REGISTERED[kind]:
        return _REGISTERED[kind][name]
    if name in _BUILTINS[kind]:
        target, extra = _BUILTINS[kind][name]
        return _load(kind, name, target, extra)
    for ep in entry_points(group=f"drillyard.{kind}", name=name):
        return _load(kind, name, ep.value, None)
    raise PluginNotFound(
        f"{kind[:-1]} '{name}'",
        "unknown name",
        f"use one of: {', '.join(names(kind))}, or register your own with "
        f"engine.registry.register('{kind}', '{name}', obj)",
    )


def _load(kind: str, name: str, target: str, extra: str | None) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        own = exc.name is not None and (exc.name == module_name or module_name.startswith(exc.name))
        if own:
            raise PluginNotFound(
                f"{kind[:-1]} '{name}'",
                f"not available in this build (module {module_name} is missing)",
                "upgrade drillyard, or pick another name",
            ) from exc
        fix = f"pip install 'drillyard[{extra}]'" if extra else f"pip install {exc.name}"
        raise PluginNotFound(
            f"{kind[:-1]} '{name}'", f"needs the package '{exc.name}', which is not installed", fix
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise PluginNotFound(
            f"{kind[:-1]} '{name}'", f"{module_name} has no attribute {attr}", None
        ) from exc


def _check_kind(kind: str) -> None:
    if kind not in _BUILTINS:
        raise ValueError(f"unknown plug-in kind {kind!r}; kinds: {', '.join(_BUILTINS)}")
