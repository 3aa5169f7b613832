"""The served OpenAPI schema says what the server accepts and answers: schemathesis, every
check, against `alter serve`'s app on a tiny model (positive and negative cases, every
documented status, Allow on 405)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from alter.models.mta_model import MTAModel
from alter.serve.config import ServeConfig
from alter.serve.predictor import Predictor
from alter.serve.server import create_app
from tests.conftest import model_config


@pytest.fixture(scope="module")
def api(registry):
    model = MTAModel(model_config("tiny-llama"), [registry.get(name) for name in ("sst2", "stsb", "dialogsum")])
    # Limits under which every schema-valid body fits the byte limit too.
    app = create_app(Predictor(model, batch_size=8, max_new_tokens=3),
                     ServeConfig(max_items=4, max_input_chars=200, max_body_bytes=16_384))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_the_server_keeps_its_published_contract(api, mode):
    """Every operation, schema-valid and schema-invalid cases, every check (not through
    schemathesis' pytest plugin, which this pytest does not load)."""
    from schemathesis.generation import GenerationMode

    operations = [result.ok() for result in api.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/v1/predict", "/v1/tasks", "/health", "/metrics"}
    checked = set()
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate()
        try:
            check()
            checked.add(operation.path)
        except Unsatisfiable:  # nothing to get wrong in a GET without parameters
            assert mode == "negative" and operation.method.upper() == "GET"
    assert "/v1/predict" in checked
