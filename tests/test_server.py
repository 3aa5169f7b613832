"""`alter serve`'s HTTP API on a tiny random model: every endpoint and error, and a fuzz."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alter.models.decode_batch import DecodeBatch
from alter.models.mta_model import MTAModel
from alter.serve.config import ServeConfig
from alter.serve.predictor import Predictor
from alter.serve.server import create_app
from tests.conftest import model_config

TASKS = ("sst2", "stsb", "dialogsum")
DIALOGUE = {"task": "dialogsum", "inputs": {"dialogue": "#Person1#: Where is the station?\n#Person2#: Left."}}


@pytest.fixture(scope="module")
def predictor(registry):
    return Predictor(MTAModel(model_config("tiny-llama"), [registry.get(name) for name in TASKS]),
                     batch_size=8, max_new_tokens=4)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, ServeConfig(max_items=8, max_body_bytes=4096,
                                                      max_input_chars=500))) as client:
        yield client


def test_health_tasks_and_docs(client):
    assert client.get("/health").json() == {"status": "ok", "tasks": 3}
    tasks = client.get("/v1/tasks").json()["tasks"]
    assert [task["name"] for task in tasks] == list(TASKS)
    assert tasks[0] == {"name": "sst2", "kind": "classification", "inputs": ["sentence"],
                        "labels": ["negative", "positive"]}
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_mixed_requests_come_back_in_order(client, predictor):
    body = {"requests": [
        {"task": "dialogsum", "inputs": {"dialogue": "#Person1#: Hi.\n#Person2#: Hello."}},
        {"task": "sst2", "inputs": {"sentence": "a fine film"}},
        {"task": "stsb", "inputs": {"sentence1": "A dog runs.", "sentence2": "A dog is running."}},
    ]}
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["task"] for r in results] == ["dialogsum", "sst2", "stsb"]
    assert results == json.loads(json.dumps(predictor.predict(body["requests"])))


def test_an_integer_written_with_a_zero_fraction_is_an_integer(client):
    """JSON Schema's integer: 16.0 is one, as the published schema lets clients write."""
    response = client.post("/v1/predict", json={"requests": [{**DIALOGUE, "num_beams": 1.0, "seed": 3.0}]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body,status,message", [
    ({"requests": [{"task": "nope", "inputs": {"sentence": "x"}}]}, 422, "requests.0: unknown task 'nope'"),
    ({"requests": [{"task": "sst2", "inputs": {"text": "x"}}]}, 422, "needs input field(s) sentence"),
    ({"requests": [{"task": "sst2", "inputs": {"sentence": ""}}]}, 422, "must be a non-empty string"),
    ({"requests": []}, 422, "requests: List should have at least 1 item"),
    ({"requests": [{"task": "sst2"}]}, 422, "requests.0.inputs: Field required"),
    ({"requests": [{"task": "sst2", "inputs": {"sentence": 5}}]}, 422, "requests.0.inputs.sentence"),
    ({"wrong": 1}, 422, "requests: Field required"),
    ({"requests": [{"task": "sst2", "inputs": {"sentence": "x"}}] * 9}, 422, "at most 8"),
    ({"requests": [{"task": "sst2", "inputs": {"sentence": "x" * 501}}]}, 422, "over 500 characters"),
    ({"requests": [{"task": "sst2", "inputs": {"sentence": "x"}, "num_beams": 2}]}, 422,
     "requests.0: num_beams: task sst2 does not generate"),
    ({"requests": [{**DIALOGUE, "num_beams": 9}]}, 422, "requests.0: num_beams 9 is over the server's 4"),
    ({"requests": [{**DIALOGUE, "num_beams": 2, "temperature": 0.5}]}, 422, "writes one beam"),
    ({"requests": [{**DIALOGUE, "temperature": 3}]}, 422, "requests.0.temperature: Input should be less than"),
    ({"requests": [{"task": "sst2", "inputs": {"sentence": "x" * 5000}}]}, 413, "request body over 4096 bytes"),
    # What the schema refuses, the server refuses: no true for a count, no "2" for a number.
    ({"requests": [{**DIALOGUE, "num_beams": True}]}, 422, "requests.0.num_beams: Input should be a valid integer"),
    ({"requests": [{**DIALOGUE, "seed": "7"}]}, 422, "requests.0.seed: Input should be a valid integer"),
    ({"requests": [{**DIALOGUE, "temperature": True}]}, 422, "requests.0.temperature: Input should be a valid number"),
    ({"requests": [{**DIALOGUE, "stream": 1}]}, 422, "requests.0.stream: Input should be a valid boolean"),
    ({"requests": [{**DIALOGUE, "num_beams": 1.5}]}, 422, "requests.0.num_beams: Input should be a valid integer"),
])
def test_bad_requests_get_a_4xx_that_names_the_problem(client, body, status, message):
    response = client.post("/v1/predict", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def _wrongly_typed() -> list[tuple[str, object, str]]:
    """Every generation field a request may set, with each value JSON Schema does not call
    its type: a bool or a string for any number, a fraction for an integer."""
    from alter.serve.requests import RequestedGeneration

    cases = []
    for name, field in RequestedGeneration.model_fields.items():
        kind = "integer" if field.annotation == int | None else "number"
        cases += [(name, value, kind) for value in (False, True, "2", *((2.5,) if kind == "integer" else ()))]
    return cases


@pytest.mark.parametrize("name, value, kind", _wrongly_typed())
def test_every_generation_field_takes_its_json_type_only(client, name, value, kind):
    response = client.post("/v1/predict", json={"requests": [{**DIALOGUE, name: value}]})
    assert response.status_code == 422, response.text
    assert f"requests.0.{name}: Input should be a valid {kind}" in response.json()["error"]


@contextlib.contextmanager
def serving(app):
    """`app` under uvicorn on a free port (TestClient reads a whole body before the app runs,
    and cannot hang up mid-stream); yields the port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def live_server(predictor):
    with serving(create_app(predictor, ServeConfig(max_body_bytes=4096))) as port:
        yield port


def test_a_chunked_body_over_the_limit_gets_413_without_being_read_whole(live_server):
    with socket.create_connection(("127.0.0.1", live_server), timeout=30) as connection:
        connection.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")  # no Content-Length
        chunk = b"x" * 1000
        for _ in range(6):  # 6,000 bytes of a body that would go on for a megabyte
            connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = connection.recv(4096).decode()  # answered before the rest is sent
        while not answer.rstrip().endswith("}"):  # the JSON body may come in a packet of its own
            answer += connection.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413") and "over 4096 bytes" in answer




def events_of(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_a_streamed_answer_is_pieces_then_the_whole_result(predictor, scheduler):
    with TestClient(create_app(predictor, ServeConfig(scheduler=scheduler))) as client:
        response = client.post("/v1/predict", json={"requests": [{**DIALOGUE, "stream": True}]})
        plain = client.post("/v1/predict", json={"requests": [DIALOGUE]}).json()["results"][0]
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    pieces, last = [e["piece"] for e in events[:-1]], events[-1]
    assert last == {"result": plain} and "".join(pieces).strip() == plain["prediction"]
    assert all("piece" in e for e in events[:-1]) and (len(pieces) > 1 or scheduler == "static")


def test_a_generation_that_fails_mid_stream_ends_it_with_an_error_event(predictor, monkeypatch):
    def broken(self):
        raise RuntimeError("the device went away")
    monkeypatch.setattr(DecodeBatch, "step", broken)
    with TestClient(create_app(predictor)) as client:
        events = events_of(client.post("/v1/predict", json={"requests": [{**DIALOGUE, "stream": True}]}).text)
    assert events[-1] == {"error": "the generation failed: the device went away"}
    assert all("piece" in e for e in events[:-1])  # the first token, written at prefill


def test_only_one_generation_item_streams(client):
    for body in ({"requests": [{**DIALOGUE, "stream": True}, DIALOGUE]},
                 {"requests": [{"task": "sst2", "inputs": {"sentence": "ok"}, "stream": True}]}):
        response = client.post("/v1/predict", json=body)
        assert response.status_code == 422 and "one item, of a generation task" in response.json()["error"]


def test_a_client_that_hangs_up_mid_stream_frees_its_row(predictor):
    slow = Predictor(predictor.model, batch_size=8, max_new_tokens=2000)
    app = create_app(slow)
    with serving(app) as port, socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        body = json.dumps({"requests": [{**DIALOGUE, "stream": True, "no_repeat_ngram_size": 0}]}).encode()  # long
        connection.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert b'data: {"piece"' in connection.recv(4096) + connection.recv(4096)
        scheduler = app.state.batcher.scheduler
        assert len(scheduler.running) == 1
        connection.close()
        deadline = time.monotonic() + 30
        while scheduler.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not scheduler.running and len(scheduler.batch) == 0


def test_malformed_json_and_wrong_methods_are_4xx(client):
    assert client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 422
    wrong_method = client.get("/v1/predict")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"  # RFC 9110
    assert client.get("/v1/nothing").status_code == 404


def test_an_api_key_is_required_when_configured(predictor, monkeypatch):
    monkeypatch.setenv("ALTER_TEST_KEY", "s3cret")
    with TestClient(create_app(predictor, ServeConfig(api_key_env="ALTER_TEST_KEY"))) as client:
        body = {"requests": [{"task": "sst2", "inputs": {"sentence": "fine"}}]}
        assert client.post("/v1/predict", json=body).status_code == 401
        assert client.post("/v1/predict", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200  # probes need no key


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_both_schedulers_answer_mixed_requests_alike(predictor, scheduler):
    body = {"requests": [{"task": "dialogsum", "inputs": {"dialogue": "#Person1#: Hi.\n#Person2#: Hello."}},
                         {"task": "sst2", "inputs": {"sentence": "a fine film"}}]}
    with TestClient(create_app(predictor, ServeConfig(scheduler=scheduler))) as client:
        response = client.post("/v1/predict", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["results"] == json.loads(json.dumps(predictor.predict(body["requests"])))


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_a_full_queue_is_answered_503_with_retry_after_at_once(predictor, scheduler):
    with TestClient(create_app(predictor, ServeConfig(scheduler=scheduler, max_queue=1))) as client:
        response = client.post("/v1/predict", json={"requests": [{"task": "sst2", "inputs": {"sentence": "ok"}}] * 2})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "at most 1" in response.json()["error"]


def test_without_batching_each_request_is_answered_alone(predictor):
    with TestClient(create_app(predictor, ServeConfig(scheduler="static", batching=False))) as client:
        response = client.post("/v1/predict", json={"requests": [{"task": "sst2", "inputs": {"sentence": "ok"}}]})
        assert response.status_code == 200 and response.json()["results"][0]["task"] == "sst2"


_scalar = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=20))
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=12)
_item = st.fixed_dictionaries({"task": st.sampled_from([*TASKS, "", "x"]) | _json,
                               "inputs": st.dictionaries(st.sampled_from(["sentence", "sentence1", "sentence2",
                                                                          "dialogue", "other"]),
                                                         st.text(max_size=40) | _json, max_size=3) | _json})
_body = st.fixed_dictionaries({"requests": st.lists(_item, max_size=4) | _json}) | _json


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_body)
def test_no_body_a_client_sends_gets_a_5xx(client, body):
    response = client.post("/v1/predict", json=body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code == 200:
        assert len(response.json()["results"]) == len(body["requests"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_no_raw_bytes_get_a_5xx(client, raw):
    response = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code < 500, (raw, response.text)


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_a_request_may_ask_for_fewer_new_tokens_never_more(predictor, scheduler):
    long = Predictor(predictor.model, batch_size=8, max_new_tokens=10)
    with TestClient(create_app(long, ServeConfig(scheduler=scheduler))) as client:
        def words(budget):
            body = {"requests": [{**DIALOGUE, **({"max_new_tokens": budget} if budget else {})}]}
            response = client.post("/v1/predict", json=body)
            assert response.status_code == 200, response.text
            return response.json()["results"][0]["prediction"]
        short, default, capped = words(2), words(None), words(1000)
    tokenizer = predictor.model.tokenizer
    assert len(tokenizer(short, add_special_tokens=False)["input_ids"]) <= 3 and capped == default
    assert default.startswith(short[:3])


def test_a_request_not_answered_in_time_gets_504_and_frees_its_rows(predictor):
    slow = Predictor(predictor.model, batch_size=8, max_new_tokens=2000)
    app = create_app(slow, ServeConfig(request_timeout_s=0.5))
    with TestClient(app) as client:
        # No repetition control: a tiny model's 260 tokens run out of unwritten 3-grams early.
        response = client.post("/v1/predict", json={"requests": [{**DIALOGUE, "no_repeat_ngram_size": 0}]})
        assert response.status_code == 504 and "within 0.5 s" in response.json()["error"]
        scheduler = app.state.batcher.scheduler
        deadline = time.monotonic() + 30
        while scheduler.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not scheduler.running


def test_metrics_count_requests_by_task_and_status_in_the_prometheus_format(predictor):
    with TestClient(create_app(predictor)) as client:
        client.post("/v1/predict", json={"requests": [DIALOGUE, {"task": "sst2", "inputs": {"sentence": "ok"}}]})
        client.post("/v1/predict", json={"requests": [{"task": "nope", "inputs": {"sentence": "x"}}]})
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in ('alter_requests_total{status="200",task="dialogsum"} 1.0',
                 'alter_requests_total{status="200",task="sst2"} 1.0',
                 'alter_requests_total{status="422",task="(other)"} 1.0',
                 'alter_request_seconds_count{task="sst2"} 1.0', "alter_queue_depth 0.0", "alter_running_rows 0.0"):
        assert line in text, line
    generated = next(line for line in text.splitlines() if line.startswith("alter_generated_tokens_total"))
    assert float(generated.split()[-1]) >= 1


def test_unknown_task_names_never_become_metric_labels(predictor):
    """A client's made-up task names are counted under one label value: a burst of 1,000
    distinct names leaves the exposition as long as one name does."""
    def unknown(client, names):
        for name in names:
            client.post("/v1/predict", json={"requests": [{"task": name, "inputs": {"sentence": "x"}}]})
        return client.get("/metrics").text

    with TestClient(create_app(predictor)) as client:
        after_one = unknown(client, ["nope"])
        after_burst = unknown(client, [f"nope-{i}" for i in range(1000)])
    assert 'alter_requests_total{status="422",task="(other)"} 1001.0' in after_burst
    assert "nope" not in after_burst
    assert len(after_burst.splitlines()) == len(after_one.splitlines())


def test_sigterm_drains_and_the_server_exits_0(predictor, tmp_path):
    import signal
    import subprocess
    import sys
    import urllib.request

    predictor.model.save(tmp_path / "model")
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "alter.cli", "serve", str(tmp_path / "model"), "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_a_bad_serve_option_is_one_line_naming_it():
    from typer.testing import CliRunner

    from alter.cli import app

    result = CliRunner().invoke(app, ["serve", "unused", "--scheduler", "bogus"])
    assert result.exit_code == 2 and "alter serve: scheduler: Input should be 'continuous' or 'static'" in result.output
    assert "Traceback" not in result.output and "pydantic" not in result.output
