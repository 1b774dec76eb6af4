"""The job registry: the allow-list of functions that may be enqueued.

It is built from the modules of the `jobs` package and nothing else, so a job
name from a client can never reach any other code: `demo.add` is looked up in
this table, never imported by name.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from jobs._artifacts import ArtifactRef
from jobs._defaults import ATTRIBUTE as DEFAULTS_ATTRIBUTE

_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$", re.IGNORECASE)


class UnknownJob(LookupError):
    """The name is not in the allow-list."""


class InvalidArguments(ValueError):
    """The arguments do not fit the job's signature; `problems` names each one."""

    def __init__(self, problems: list[dict[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p['argument']}: {p['problem']}" for p in problems))


@dataclass(frozen=True)
class JobSpec:
    """One allow-listed job: its public name and the function behind it."""

    name: str
    func: Callable[..., Any]

    @property
    def path(self) -> str:
        """The dotted import path RQ stores in the job record."""
        return f"{self.func.__module__}.{self.func.__qualname__}"

    @cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.func)

    @cached_property
    def arguments_model(self) -> type[BaseModel]:
        """A pydantic model of the parameters, built from the type hints.

        Fields get positional names and the parameter's name as alias, so a
        parameter may be called `json` or `copy` without clashing with BaseModel.
        """
        hints = _type_hints(self.func)
        fields: dict[str, Any] = {}
        for index, param in enumerate(self.signature.parameters.values()):
            annotation = hints.get(param.name, Any)
            if param.kind is param.VAR_POSITIONAL:
                annotation, default = list[annotation], []
            elif param.kind is param.VAR_KEYWORD:
                annotation, default = dict[str, annotation], {}
            else:
                default = ... if param.default is param.empty else param.default
            fields[f"p{index}"] = (annotation, Field(default, alias=param.name))
        return create_model(
            f"{self.name.replace('.', '_')}_arguments",
            __config__=ConfigDict(extra="forbid", populate_by_name=False),
            **fields,
        )

    def validate(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Check args and kwargs against the signature and hints.

        Returns the arguments to store, as JSON values after validation (so `"2"`
        for an `int` is stored as `2`). Raises InvalidArguments naming each problem.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise InvalidArguments([{"argument": _argument_in(str(error)), "problem": str(error)}]) from None
        try:
            model = self.arguments_model.model_validate(bound.arguments)
        except ValidationError as error:
            raise InvalidArguments(_problems_by_argument(error)) from None
        values = model.model_dump(mode="json", by_alias=True)
        return _rebuild_call(self.signature, bound.arguments.keys(), values)

    @property
    def declared(self) -> dict[str, Any]:
        """What the job declares with `@defaults(...)` (queue, retry, rate limit, scope, ...)."""
        return getattr(self.func, DEFAULTS_ATTRIBUTE, {})

    @property
    def scope(self) -> str:
        """The token scope that enqueueing it over HTTP takes (`@defaults(scope=...)`)."""
        return self.declared.get("scope", "enqueue")

    def scopes(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[str, ...]:
        """The token scopes enqueueing it with these arguments takes: its own
        (`scope`), and `read` when they name files other jobs produced
        (`ArtifactRef`, an email's attachments), which downloading takes too."""
        if self._artifact_parameters:
            bound = self.signature.bind(*args, **kwargs).arguments
            if any(bound.get(name) for name in self._artifact_parameters):
                return self.scope, "read"
        return (self.scope,)

    @cached_property
    def _artifact_parameters(self) -> frozenset[str]:
        return frozenset(name for name, hint in _type_hints(self.func).items() if _mentions(hint, ArtifactRef))

    def parameters_schema(self) -> dict[str, Any]:
        """The parameters as JSON Schema, for clients to see what they may send."""
        return copy.deepcopy(self._schema)

    @cached_property
    def _schema(self) -> dict[str, Any]:
        # Generating it takes milliseconds; a job's signature never changes.
        return self.arguments_model.model_json_schema(by_alias=True)


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    import typing

    try:
        # include_extras keeps Annotated[..., Field(...)] constraints, which pydantic enforces.
        return typing.get_type_hints(func, include_extras=True)
    except Exception:  # an unresolvable forward reference: fall back to Any
        return {}


def _mentions(hint: Any, wanted: type) -> bool:
    """Whether the type `hint` is `wanted` or holds it (`list[...]`, `Optional`, `Annotated`)."""
    import typing

    return hint is wanted or any(_mentions(inner, wanted) for inner in typing.get_args(hint))


def _problems_by_argument(error: ValidationError) -> list[dict[str, str]]:
    """One entry an argument; a union type reports once per member, so join them."""
    problems: dict[str, list[str]] = {}
    for detail in error.errors():
        argument = str(detail["loc"][0]) if detail["loc"] else "*"
        messages = problems.setdefault(argument, [])
        if detail["msg"] not in messages:
            messages.append(detail["msg"])
    return [{"argument": name, "problem": " or ".join(messages)} for name, messages in problems.items()]


def _argument_in(message: str) -> str:
    quoted = re.search(r"'([^']+)'", message)
    return quoted.group(1) if quoted else "*"


def _rebuild_call(
    signature: inspect.Signature, given: Any, values: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Split validated values back into args and kwargs the function accepts."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    has_var_positional = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    for param in signature.parameters.values():
        if param.name not in given:
            continue
        value = values[param.name]
        if param.kind is param.VAR_POSITIONAL:
            args.extend(value)
        elif param.kind is param.VAR_KEYWORD:
            kwargs.update(value)
        elif param.kind is param.POSITIONAL_ONLY or (
            has_var_positional and param.kind is param.POSITIONAL_OR_KEYWORD
        ):
            args.append(value)
        else:
            kwargs[param.name] = value
    return args, kwargs


class JobRegistry:
    """Every public function defined in a module of a package, by `<module>.<function>`."""

    def __init__(self, specs: dict[str, JobSpec]):
        self._specs = dict(sorted(specs.items()))
        self._by_path = {spec.path: spec for spec in self._specs.values()}

    @classmethod
    def from_package(cls, package: str = "jobs") -> "JobRegistry":
        root = importlib.import_module(package)
        specs: dict[str, JobSpec] = {}
        for info in pkgutil.iter_modules(root.__path__):
            if info.name.startswith("_") or info.ispkg:
                continue
            module = importlib.import_module(f"{package}.{info.name}")
            for func_name, func in _public_functions(module):
                name = f"{info.name}.{func_name}"
                specs[name] = JobSpec(name=name, func=func)
        return cls(specs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._specs

    def __iter__(self):
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, name: str) -> JobSpec:
        """The job called `name`; UnknownJob when it is not allow-listed."""
        if not isinstance(name, str) or not _NAME.match(name) or name not in self._specs:
            raise UnknownJob(name)
        return self._specs[name]

    def by_path(self, path: str) -> JobSpec | None:
        """The job whose function lives at import path `path`, if allow-listed."""
        return self._by_path.get(path)


def _public_functions(module: ModuleType):
    for attr, value in vars(module).items():
        if attr.startswith("_") or not inspect.isfunction(value):
            continue
        # Only functions written in this module: an imported helper is not a job.
        if value.__module__ == module.__name__:
            yield attr, value
