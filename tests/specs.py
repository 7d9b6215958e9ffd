"""The upstream documents the tests check shapes against, kept in tests/fixtures/ (their sources
and licences are in tests/fixtures/README.md): OpenMeter's openapi.yaml and Stripe's
fixtures3.json. Nothing here reads outside the checkout."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from openapi_core import Config, OpenAPI

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OPENMETER_SPEC = FIXTURES / "openmeter" / "openapi.yaml"
STRIPE_FIXTURES = FIXTURES / "stripe" / "fixtures3.json"

# OpenMeter answers these media types with JSON bodies; openapi-core reads a media type it does
# not know as bytes, so it is told.
JSON_MEDIA_TYPES = (
    "application/problem+json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
)


@cache
def openmeter_spec_document() -> dict[str, Any]:
    """OpenMeter's openapi.yaml as a dict (parsed once per process: it is 1 MB)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document: dict[str, Any] = yaml.load(OPENMETER_SPEC.read_text(), Loader=loader)
    return document


def openmeter_openapi(server_url: str, variables: dict[str, Any] | None = None) -> OpenAPI:
    """OpenMeter's spec with its servers replaced by `server_url` (a test server's address,
    optionally templated with `variables` as OpenAPI server variables)."""
    spec = dict(openmeter_spec_document())
    server: dict[str, Any] = {"url": server_url}
    if variables:
        server["variables"] = variables
    spec["servers"] = [server]
    config = Config(extra_media_type_deserializers=dict.fromkeys(JSON_MEDIA_TYPES, json.loads))
    return OpenAPI.from_dict(spec, config=config)


def stripe_fixture_resources() -> dict[str, Any]:
    """Stripe's sample v1 resources, by object name."""
    resources: dict[str, Any] = json.loads(STRIPE_FIXTURES.read_text())["resources"]
    return resources
