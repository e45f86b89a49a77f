"""Which endpoint serves which job spec type.

Each endpoint module registers the spec classes it serves::

    @registry.sink(S3DestinationSpec)
    def _open(ctx: JobContext, job: JobSpec, spec: S3DestinationSpec, name: str) -> Sink: ...

and the operations layer asks :func:`open_source` / :func:`open_sinks`; a spec type nobody
registered is an error, never a silent default. The built-in endpoint modules are imported
(and so registered) on the first lookup. A spec's type name is its ``type`` field
(``jobs.type_name``), declared once on the spec class.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from fspd.aws import AwsTarget, profile_session
from fspd.checkpoint import JOURNALS, JournalShape
from fspd.context import JobContext
from fspd.endpoint import PlansPuts, Sink, Source, Steps
from fspd.errors import BadInput
from fspd.jobs import AwsEndpointSpec, JobSpec, type_name

SourceFactory = Callable[[JobContext, JobSpec], Source]
SinkFactory = Callable[[JobContext, JobSpec, Any, str], Sink]
StepsFactory = Callable[[JobContext, JobSpec], Steps]
F = TypeVar("F", bound=Callable[..., Any])

BUILTIN = ("fspd.endpoints.ebs", "fspd.endpoints.chain", "fspd.endpoints.files",
           "fspd.endpoints.s3")

_sources: dict[type, SourceFactory] = {}
_sinks: dict[type, SinkFactory] = {}
_planners: dict[type, SinkFactory] = {}  # a dry run's stand-in for a sink (never opened)
_steps: dict[type, StepsFactory] = {}  # sources served as a sequence of jobs
_loaded = False


def source(spec_class: type) -> Callable[[F], F]:
    """Register the decorated ``factory(ctx, job)`` as what opens ``job.source`` of this
    spec class."""
    def register(factory: F) -> F:
        _claim(_sources, spec_class, factory, "source")
        return factory
    return register


def sink(spec_class: type, *, journal: JournalShape | None = None) -> Callable[[F], F]:
    """Register the decorated ``factory(ctx, job, spec, name)`` as what opens a destination
    of this spec class; ``journal``: the shape of its journal entry, when it is resumable and
    its type is new to the checkpoint (``checkpoint.JOURNALS``)."""
    def register(factory: F) -> F:
        _claim(_sinks, spec_class, factory, "destination")
        if journal is not None:
            JOURNALS.setdefault(type_name(spec_class), journal)
        return factory
    return register


def planner(spec_class: type) -> Callable[[F], F]:
    """Register the decorated ``factory(ctx, job, spec, name)`` as what a dry run asks how
    many requests a destination of this spec class would need (see ``PlansPuts``). Optional:
    destinations without one cost nothing in the plan."""
    def register(factory: F) -> F:
        _claim(_planners, spec_class, factory, "destination planner")
        return factory
    return register


def steps(spec_class: type) -> Callable[[F], F]:
    """Register the decorated ``factory(ctx, job) -> Steps`` for a source served as a
    sequence of jobs, each run like any other (a snapshot lineage, one sync step each)."""
    def register(factory: F) -> F:
        _claim(_steps, spec_class, factory, "source")
        return factory
    return register


def _claim(table: dict[type, Any], spec_class: type, factory: Any, role: str) -> None:
    held = table.get(spec_class)
    if held is not None and held is not factory:
        raise ValueError(f"{role} type {type_name(spec_class)!r} ({spec_class.__name__}) is "
                         f"already served by {held.__module__}.{held.__qualname__}")
    table[spec_class] = factory


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in BUILTIN:
            importlib.import_module(module)
        _loaded = True


def _lookup(table: dict[type, Any], spec: Any, role: str, field: str) -> Any:
    _load_builtins()
    factory = table.get(type(spec))
    if factory is None and table is _sources and type(spec) in _steps:
        raise BadInput(f"source type {type_name(type(spec))!r} runs as steps, each with a "
                       "source of its own", field=field)
    if factory is None:
        raise BadInput(f"no endpoint serves {role} type {type_name(type(spec))!r} "
                       f"({type(spec).__name__}); served: "
                       f"{', '.join(sorted({type_name(c) for c in table}))}", field=field)
    return factory


def open_steps(ctx: JobContext, job: JobSpec) -> Steps | None:
    """The steps of ``job`` when its source is served as a sequence of jobs, else None."""
    _load_builtins()
    factory = _steps.get(type(job.source))
    return factory(ctx, job) if factory is not None else None


def open_planners(ctx: JobContext, job: JobSpec) -> list[PlansPuts]:
    """For a dry run: the destinations of ``job`` that can say what they would send."""
    _load_builtins()
    out = []
    for dest, name in zip(job.destinations, job.destination_names(), strict=True):
        factory = _planners.get(type(dest))
        if factory is not None:
            out.append(factory(ctx, job, dest, name))
    return out


def source_factory(spec: Any) -> SourceFactory:
    return _lookup(_sources, spec, "source", "source.type")  # type: ignore[no-any-return]


def sink_factory(spec: Any, field: str = "destinations") -> SinkFactory:
    return _lookup(_sinks, spec, "destination", f"{field}.type")  # type: ignore[no-any-return]


def open_source(ctx: JobContext, job: JobSpec) -> Source:
    return source_factory(job.source)(ctx, job)


def open_sink(ctx: JobContext, job: JobSpec, spec: Any, name: str,
              field: str = "destinations") -> Sink:
    return sink_factory(spec, field)(ctx, job, spec, name)


def open_sinks(ctx: JobContext, job: JobSpec) -> list[Sink]:
    """One sink per destination of ``job``, in order."""
    return [open_sink(ctx, job, dest, name, f"destinations[{i}]")
            for i, (dest, name) in enumerate(zip(job.destinations, job.destination_names(),
                                                 strict=True))]


def served_types() -> dict[str, set[type]]:
    """The registered spec classes, by role (for tests and docs)."""
    _load_builtins()
    return {"source": set(_sources) | set(_steps), "destination": set(_sinks)}


def aws_ends(job: JobSpec) -> list[tuple[str, AwsEndpointSpec]]:
    """The ends of ``job`` that are AWS services, named by field (``source``,
    ``destinations[0]``)."""
    ends = [("source", job.source)] + [(f"destinations[{i}]", d)
                                      for i, d in enumerate(job.destinations)]
    return [(field, end) for field, end in ends if isinstance(end, AwsEndpointSpec)]


def default_region(profile: str | None = None) -> str:
    region = profile_session(profile).get_config_variable("region")
    return str(region or "us-east-1")


def target_for(spec: AwsEndpointSpec) -> AwsTarget:
    """Where an AWS end of a job sends its requests."""
    return AwsTarget(region=spec.region or default_region(spec.profile), profile=spec.profile,
                     endpoint_url=spec.endpoint_url, role_arn=spec.role_arn,
                     external_id=spec.external_id)
