"""`spa serve`'s application on a real uvicorn server on loopback, with real HTTP clients."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from safetensors.torch import load, save

from spa.serve.settings import ServeSettings
from spa.tasks.signing import generate_private_key

from .helpers import SAMPLE, make_tasks, outputs_of, predict_json, running

CLIENTS = 6


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return make_tasks(tmp_path_factory.mktemp("serve"))


def _close(tasks, name: str, inputs: torch.Tensor, outputs: torch.Tensor) -> bool:
    """True if `outputs` are task `name`'s (batching may change float rounding only)."""
    return outputs.shape == (inputs.shape[0], 3) and torch.allclose(
        outputs, tasks.expected(name, inputs), rtol=1e-5, atol=1e-5
    )


def _client_loop(tasks, url: str, offset: int, calls: int) -> list[str]:
    """One client sending `calls` requests, alternating tasks; the wrong answers."""
    names, wrong = sorted(tasks.paths), []
    generator = torch.Generator().manual_seed(offset)
    with httpx.Client(timeout=30) as client:
        for step in range(calls):
            name = names[(offset + step) % len(names)]
            inputs = torch.randn(1 + step % 3, *SAMPLE, generator=generator)
            response = predict_json(client, url, name, inputs)
            if response.status_code != 200 or not _close(tasks, name, inputs, outputs_of(response)):
                wrong.append(f"{name}: {response.status_code} {response.text[:80]}")
    return wrong


def test_references_differ_between_tasks(tasks):
    x = torch.randn(5, *SAMPLE)
    outputs = [tasks.expected(name, x) for name in sorted(tasks.paths)]
    assert all(
        not torch.allclose(a, b, atol=1e-3) for i, a in enumerate(outputs) for b in outputs[i + 1 :]
    )


def test_concurrent_clients_over_three_tasks_get_their_tasks_answers(tasks):
    settings = ServeSettings(max_batch=8, max_wait_ms=5, input_shape=SAMPLE)
    with running(tasks.host(cache_size=2), settings) as url:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = pool.map(lambda i: _client_loop(tasks, url, i, 12), range(CLIENTS))
            wrong = [w for result in results for w in result]
        metrics = httpx.get(f"{url}/metrics").text
    assert wrong == []
    for name in tasks.paths:
        assert f'spa_requests_total{{status="200",task="{name}"}} {CLIENTS * 4}.0' in metrics
        assert f'spa_task_builds_total{{task="{name}"}}' in metrics
        assert f'spa_cache_hits_total{{task="{name}"}}' in metrics
        assert f'spa_request_latency_seconds_count{{task="{name}"}} {CLIENTS * 4}.0' in metrics
    assert "spa_batch_size_bucket" in metrics


def test_safetensors_inputs_and_outputs(tasks):
    inputs = torch.randn(3, *SAMPLE)
    with running(tasks.host(["a"])) as url:
        response = httpx.post(
            f"{url}/v1/tasks/a/predict",
            content=save({"inputs": inputs}),
            headers={"Content-Type": "application/x-safetensors"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-safetensors"
    assert torch.equal(load(response.content)["outputs"], tasks.expected("a", inputs))


BAD_REQUESTS = [  # (task, body arguments, status, words of the one-line reason)
    ("nope", {"json": {"inputs": [[0.0] * 4]}}, 404, "unknown task 'nope'"),
    ("a", {"json": {"inputs": [[0.0] * 5]}}, 422, "shape [1, 5], expected [batch, 4]"),
    ("a", {"json": {"inputs": [[0.0] * 4], "dtype": "float64"}}, 422, "dtype"),
    ("a", {"json": {"inputs": [[0.0] * 4, [1.0]]}}, 400, "rectangular"),
    ("a", {"json": {"values": []}}, 400, '"inputs" field'),
    ("a", {"json": {"inputs": []}}, 422, "non-empty batch"),
    ("a", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
    ("a", {"content": b"\x00" * 10, "headers": {"Content-Type": "text/csv"}}, 415, "text/csv"),
    ("a", {"json": {"inputs": [[0.0] * 4] * 400}}, 413, "over the limit"),
    (
        "a",
        {
            "content": save({"inputs": torch.zeros(1, 4, dtype=torch.float64)}),
            "headers": {"Content-Type": "application/x-safetensors"},
        },
        422,
        "dtype float64, expected float32",
    ),
    (
        "a",
        {"content": b"garbage", "headers": {"Content-Type": "application/octet-stream"}},
        400,
        "not a safetensors file",
    ),
]


def test_bad_requests_get_one_line_4xx_and_never_disturb_others(tasks):
    settings = ServeSettings(max_wait_ms=20, input_shape=SAMPLE, max_body_bytes=4096)
    stop, wrong = threading.Event(), []

    def good_traffic(url: str) -> None:
        while not stop.is_set():
            wrong.extend(_client_loop(tasks, url, 0, 3))

    with running(tasks.host(), settings) as url:
        threads = [threading.Thread(target=good_traffic, args=(url,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            with httpx.Client(timeout=30) as client:
                for name, arguments, status, reason in BAD_REQUESTS * 2:
                    response = client.post(f"{url}/v1/tasks/{name}/predict", **arguments)
                    detail = response.json()["detail"]
                    assert response.status_code == status, detail
                    assert reason in detail and "\n" not in detail
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        metrics = httpx.get(f"{url}/metrics").text
    assert wrong == []
    assert 'spa_requests_total{status="404",task="(unknown)"} 2.0' in metrics


def test_tasks_added_and_removed_while_serving(tasks):
    stop, wrong = threading.Event(), []
    with running(tasks.host(["a"]), ServeSettings(input_shape=SAMPLE)) as url:

        def traffic() -> None:
            while not stop.is_set():
                wrong.extend(_client_loop(tasks, url, 0, 1))  # task "a" only

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            with httpx.Client(timeout=30) as client:
                for _ in range(2):
                    added = client.post(f"{url}/v1/tasks/b", content=tasks.paths["b"].read_bytes())
                    assert added.status_code == 201, added.text
                    assert client.post(f"{url}/v1/tasks/b", content=b"x").status_code == 409
                    inputs = torch.randn(2, *SAMPLE)
                    answer = predict_json(client, url, "b", inputs)
                    assert _close(tasks, "b", inputs, outputs_of(answer))
                    listed = [t["name"] for t in client.get(f"{url}/v1/tasks").json()["tasks"]]
                    assert listed == ["a", "b"]
                    assert client.delete(f"{url}/v1/tasks/b").status_code == 204
                    assert predict_json(client, url, "b", inputs).status_code == 404
                assert client.delete(f"{url}/v1/tasks/b").status_code == 404
                broken = client.post(f"{url}/v1/tasks/c", content=b"not a bundle")
                assert broken.status_code == 422 and "spa-upload" not in broken.text
                assert client.post(f"{url}/v1/tasks/%20c", content=b"x").status_code == 400
        finally:
            stop.set()
            thread.join()
    assert wrong == []


def test_with_trusted_keys_only_signed_bundles_are_accepted(tasks, tmp_path):
    key = generate_private_key()
    signed = make_tasks(tmp_path, names=("s",), signing_key=key)
    host = tasks.host([], trusted_keys=[key.public_key()])
    with running(host, ServeSettings(input_shape=SAMPLE)) as url:
        refused = httpx.post(f"{url}/v1/tasks/a", content=tasks.paths["a"].read_bytes())
        assert refused.status_code == 422 and "not signed" in refused.json()["detail"]
        accepted = httpx.post(f"{url}/v1/tasks/s", content=signed.paths["s"].read_bytes())
        assert accepted.status_code == 201, accepted.text
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "tasks": 1}


def test_read_only_server_refuses_task_changes(tasks):
    with running(tasks.host(["a"]), ServeSettings(allow_task_changes=False)) as url:
        assert httpx.delete(f"{url}/v1/tasks/a").status_code == 403
        assert httpx.post(f"{url}/v1/tasks/b", content=b"x").status_code == 403


def test_large_request_is_answered_and_others_are_not_held_up(tasks):
    big = torch.randn(4_000, *SAMPLE)  # over 256 KiB of JSON: parsed off the event loop
    with running(tasks.host(), ServeSettings(input_shape=SAMPLE)) as url:
        with ThreadPoolExecutor(2) as pool:
            large = pool.submit(predict_json, httpx.Client(timeout=60), url, "a", big)
            assert _client_loop(tasks, url, 1, 4) == []
            response = large.result()
    assert response.status_code == 200
    assert _close(tasks, "a", big, outputs_of(response))


def test_a_changed_base_is_refused_with_503(tmp_path):
    tasks = make_tasks(tmp_path, names=("a",))
    inputs = torch.randn(1, *SAMPLE)
    with running(tasks.host(), ServeSettings(input_shape=SAMPLE)) as url:
        assert predict_json(httpx, url, "a", inputs).status_code == 200
        with torch.no_grad():
            tasks.base.fc.bias.add_(1.0)
        refused = predict_json(httpx, url, "a", inputs)
    assert refused.status_code == 503
    assert "base model changed after the host was created" in refused.json()["detail"]


def test_without_an_input_shape_a_sample_the_model_cannot_take_fails_alone(tasks):
    inputs = torch.randn(2, *SAMPLE)
    with running(tasks.host(["a"]), ServeSettings(max_wait_ms=50)) as url:
        with ThreadPoolExecutor(2) as pool:
            bad = pool.submit(predict_json, httpx.Client(), url, "a", torch.randn(1, 7))
            good = predict_json(httpx, url, "a", inputs)
            refused = bad.result()
    assert good.status_code == 200 and _close(tasks, "a", inputs, outputs_of(good))
    assert refused.status_code == 422
    assert "cannot run on inputs of shape [1, 7]" in refused.json()["detail"]
