"""The registry is the one map from job spec type to endpoint: every type a job file may name
is served, a type nobody registered is refused by name (never a silent file sink), and a type
is served once."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from fspd import jobs
from fspd.endpoints import registry
from fspd.errors import BadInput


def test_every_type_a_job_file_may_name_is_served() -> None:
    served = registry.served_types()
    assert set(jobs.SOURCE_SPECS) <= served["source"]
    assert set(jobs.DESTINATION_SPECS) <= served["destination"]


class _AzureBlobSpec(BaseModel):
    type: Literal["azure-blob"] = "azure-blob"


def test_an_unregistered_destination_type_is_refused_naming_it() -> None:
    job = jobs.JobSpec(source={"type": "file", "path": "/nonexistent"})
    with pytest.raises(BadInput, match="no endpoint serves destination type 'azure-blob'") as e:
        registry.open_sink(None, job, _AzureBlobSpec(), "backup",  # type: ignore[arg-type]
                           "destinations[0]")
    assert e.value.field == "destinations[0].type"


def test_a_served_type_cannot_be_claimed_twice() -> None:
    with pytest.raises(ValueError, match=r"'file'.*already served by fspd\.endpoints\.files"):
        registry.sink(jobs.FileDestinationSpec)(lambda *a: None)


def test_type_names_come_from_the_spec_classes() -> None:
    assert jobs.TYPE_NAMES == ("ebs", "ebs-chain", "file", "s3")
    with pytest.raises(BadInput, match="'type' must be one of: ebs, ebs-chain, file, s3"):
        jobs.validate({"source": {"type": "azure-blob"}})


def _calls(module: str, names: set[str]) -> list[ast.Call]:
    tree = ast.parse((Path(__file__).resolve().parents[2] / module).read_text())
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id in names]


def test_run_dispatches_on_no_spec_type_and_the_pipeline_probes_no_endpoint() -> None:
    """run.py asks the registry (no isinstance on a *Spec class); pipeline.py looks
    capabilities up once (no hasattr/getattr on a source or sink)."""
    on_specs = [ast.unparse(c) for c in _calls("fspd/run.py", {"isinstance"})
                if "Spec" in ast.unparse(c.args[1])]
    assert on_specs == []
    assert [ast.unparse(c) for c in _calls("fspd/pipeline.py", {"hasattr", "getattr"})] == []
