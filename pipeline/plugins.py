"""Pruner plugins: a class named by import path, ``"package.module:Class"``, resolved and checked before any job.

The study's working folder is on the import path (as it is for ``python -m`` in every job), so a module beside
params.yaml, or a package under it, needs no installing. A plugin is built like a baseline: with ``targets`` (the
prunable weights+biases to keep after each iteration), ``seed`` and ``name`` when its constructor takes them, and its
options. Its module file's SHA-256 goes into its jobs' config slices: editing the module reruns its jobs and only those.
See docs/plugins.md.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from pathlib import Path

from relief.pruners import PRUNERS, PrunerError, build_pruner, check_pruner

SUPPLIED = ("targets", "seed", "name")  # set by the pipeline, never by a study's options


class PluginError(ValueError):
    """A plugin that cannot be imported, built or used; the message names it and says why."""


def resolve(path: str) -> type:
    """The class ``path`` ("package.module:Class") names, imported with the working folder on the import path."""
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # an import runs arbitrary code: any failure means the same to the user
        raise PluginError(f"cannot import {module_name}: {type(error).__name__}: {error}") from None
    found = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise PluginError(f"module {module_name} ({_file(module)}) has no {attribute}")
    if not inspect.isclass(found):
        raise PluginError(f"{path} is a {type(found).__name__}, not a class")
    return found


def source_sha256(cls: type) -> str:
    """The SHA-256 of the file that defines ``cls``'s module."""
    return hashlib.sha256(Path(_file(inspect.getmodule(cls))).read_bytes()).hexdigest()


def build(name: str, cls: type | None, options: dict, *, targets: tuple[int, ...], seed: int):
    """The pruner ``name`` (``cls``: a plugin's class, else a built-in), built with ``targets``, ``seed`` and ``name``
    where its constructor takes them, and ``options``."""
    supplied = {"targets": targets, "seed": seed, "name": name}
    accepted = _parameters(cls or PRUNERS[name])
    return build_pruner(name, cls=cls, **{k: v for k, v in supplied.items() if k in accepted}, **options)


def check(name: str, cls: type | None, options: dict, path: str | None = None) -> None:
    """Build pruner ``name`` once with placeholder targets and check it against the protocol; PluginError if not.
    ``path``: the plugin's import path, for the messages."""
    what = f"plugin {name!r} ({path or cls.__qualname__})" if cls is not None else f"pruner {name!r}"
    reserved = sorted(set(options) & set(SUPPLIED))
    if reserved:
        raise PluginError(f"{what}: options {reserved} are set by the study (targets: the counts of each iteration; "
                          "seed: the job's seed); remove them")
    try:
        pruner = build(name, cls, options, targets=(1,), seed=0)
    except Exception as error:
        raise PluginError(f"{what} does not accept its options {options}: {type(error).__name__}: {error}") from None
    try:
        check_pruner(pruner, what)
    except PrunerError as error:
        raise PluginError(str(error)) from None
    if pruner.name != name:
        raise PluginError(f"{what}: its instances are named {pruner.name!r}; name the entry {pruner.name!r}, or let "
                          "the constructor take `name`")


def _parameters(cls: type) -> set[str]:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return set(SUPPLIED)
    return {p.name for p in parameters}


def _file(module) -> str:
    path = getattr(module, "__file__", None)
    if path is None:
        raise PluginError(f"module {module.__name__} has no source file to hash; define the plugin in a .py file")
    return path
