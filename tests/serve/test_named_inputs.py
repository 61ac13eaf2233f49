"""Named inputs (`input_ids`, `attention_mask`) to a tiny `transformers` BERT over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
import transformers
from safetensors.torch import load, save
from torch import nn

import spa
from spa.serve.inputs import parse_named_input
from spa.serve.settings import ServeSettings
from spa.tasks import TaskHost, load_task, save_task

from .._transformers import SIZES, VOCAB
from .helpers import running

NAMES, CLIENTS, SEQ = ("a", "b"), 4, 6


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A raw tiny BERT base, two SPLoRA task bundles and each task's `load_task` model."""
    folder = tmp_path_factory.mktemp("named")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        **SIZES, vocab_size=VOCAB, max_position_embeddings=16, num_labels=3
    )
    base = transformers.BertForSequenceClassification(config).eval()
    paths, references = {}, {}
    for index, name in enumerate(NAMES):
        model = spa.task_model(base, spa.SPLoRAConfig(rank=1 + index))
        for _, layer in spa.adapter_layers(model):
            for parameter in layer.adapter_parameter_names():
                nn.init.normal_(getattr(layer, parameter), std=0.3)
        paths[name] = folder / f"{name}.safetensors"
        save_task(model, paths[name], base_model=base)
        references[name] = load_task(base, paths[name]).eval()
    return base, paths, references


def _inputs(generator: torch.Generator, rows: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (rows, SEQ), generator=generator)
    mask = torch.ones(rows, SEQ, dtype=torch.int64)
    mask[:, SEQ - 1 - int(torch.randint(0, 3, (1,), generator=generator)) :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _expected(references, name: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return references[name](**inputs).logits


def _host(base, paths) -> TaskHost:
    host = TaskHost(base)
    for name, path in paths.items():
        host.add_task(name, path)
    return host


def _post(client, url, name, inputs, binary: bool):
    if binary:
        return client.post(
            f"{url}/v1/tasks/{name}/predict",
            content=save(inputs),
            headers={"Content-Type": "application/x-safetensors"},
        )
    body = {"inputs": {key: value.tolist() for key, value in inputs.items()}}
    return client.post(f"{url}/v1/tasks/{name}/predict", json=body)


def _answer(response, binary: bool) -> torch.Tensor:
    if binary:
        return load(response.content)["outputs"]
    return torch.tensor(response.json()["outputs"], dtype=torch.float32)


def _client(references, url: str, offset: int, calls: int) -> list[str]:
    """One client alternating tasks and body formats; the wrong answers."""
    generator, wrong = torch.Generator().manual_seed(offset), []
    with httpx.Client(timeout=60) as client:
        for step in range(calls):
            name, binary = NAMES[(offset + step) % 2], (offset + step // 2) % 2 == 1
            inputs = _inputs(generator, 1 + step % 2)
            response = _post(client, url, name, inputs, binary)
            if response.status_code != 200:
                wrong.append(f"{name}: {response.status_code} {response.text[:80]}")
                continue
            expected = _expected(references, name, inputs)
            if not torch.allclose(_answer(response, binary), expected, rtol=1e-4, atol=1e-5):
                wrong.append(f"{name}: wrong outputs")
    return wrong


def test_tasks_differ(bert):
    _, _, references = bert
    inputs = _inputs(torch.Generator().manual_seed(9), 3)
    a, b = (_expected(references, name, inputs) for name in NAMES)
    assert not torch.allclose(a, b, atol=1e-3)


def test_concurrent_named_inputs_json_and_safetensors_get_their_tasks_logits(bert):
    base, paths, references = bert
    settings = ServeSettings(max_batch=8, max_wait_ms=20)
    with running(_host(base, paths), settings) as url:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = pool.map(lambda i: _client(references, url, i, 6), range(CLIENTS))
            wrong = [w for result in results for w in result]
        metrics = httpx.get(f"{url}/metrics").text
    assert wrong == []
    batches = [line for line in metrics.splitlines() if line.startswith("spa_batch_size_count")]
    assert batches  # batches were run and counted


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (
            lambda x: {"input_idz": x["input_ids"], "attention_mask": x["attention_mask"]},
            422,
            "idz",
        ),
        (lambda x: {**x, "attention_mask": x["attention_mask"][:, :-2]}, 422, "attention_mask"),
        (lambda x: {**x, "attention_mask": x["attention_mask"][:1]}, 422, "batch sizes"),
        (lambda x: {**x, "bad name": x["input_ids"]}, 422, "bad name"),
    ],
)
def test_bad_named_inputs_are_one_line_4xx_and_others_are_answered(bert, change, status, words):
    base, paths, references = bert
    generator = torch.Generator().manual_seed(3)
    good, bad = _inputs(generator, 2), change(_inputs(generator, 2))
    settings = ServeSettings(max_batch=8, max_wait_ms=100)  # both land in one batching window
    with running(_host(base, paths), settings) as url, httpx.Client(timeout=60) as client:
        with ThreadPoolExecutor(2) as pool:
            refused = pool.submit(_post, client, url, "a", bad, False)
            answered = pool.submit(_post, client, url, "a", good, True)
            refused, answered = refused.result(), answered.result()
    assert refused.status_code == status
    detail = refused.json()["detail"]
    assert words in detail and "\n" not in detail
    assert answered.status_code == 200
    assert torch.allclose(
        _answer(answered, True), _expected(references, "a", good), rtol=1e-4, atol=1e-5
    )


DECLARED = (
    parse_named_input("input_ids=seq:int64"),
    parse_named_input("attention_mask=seq:int64"),
)


@pytest.fixture(scope="module")
def declared_server(bert):
    """A server over the tiny BERT tasks with `--input` declarations for both inputs."""
    base, paths, _ = bert
    settings = ServeSettings(max_batch=8, max_wait_ms=100, named_inputs=DECLARED)
    with running(_host(base, paths), settings) as url:
        yield url


@pytest.mark.parametrize("binary", [False, True])
def test_declared_named_inputs_are_answered_with_their_tasks_logits(bert, declared_server, binary):
    _, _, references = bert
    inputs = _inputs(torch.Generator().manual_seed(5), 3)
    with httpx.Client(timeout=60) as client:
        response = _post(client, declared_server, "b", inputs, binary)
    assert response.status_code == 200, response.text
    expected = _expected(references, "b", inputs)
    assert torch.allclose(_answer(response, binary), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "binary", "words"),
    [
        (lambda x: {"input_ids": x["input_ids"]}, False, "'attention_mask' is missing"),
        (lambda x: {**x, "token_type_ids": x["input_ids"].clone()}, True, "'token_type_ids'"),
        (lambda x: {**x, "input_ids": x["input_ids"].int()}, True, "'input_ids' has dtype int32"),
        (lambda x: {**x, "input_ids": x["input_ids"] + 0.5}, False, "'input_ids' has non-int"),
        (lambda x: {**x, "attention_mask": x["attention_mask"][:, :-1]}, False, "seq=5"),
    ],
)
def test_inputs_that_differ_from_their_declaration_are_422_naming_them(
    bert, declared_server, change, binary, words
):
    _, _, references = bert
    generator = torch.Generator().manual_seed(4)
    good, bad = _inputs(generator, 2), change(_inputs(generator, 2))
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(2) as pool:
        refused = pool.submit(_post, client, declared_server, "a", bad, binary)
        answered = pool.submit(_post, client, declared_server, "a", good, not binary)
        refused, answered = refused.result(), answered.result()
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert words in detail and "\n" not in detail
    assert answered.status_code == 200
    expected = _expected(references, "a", good)
    assert torch.allclose(_answer(answered, not binary), expected, rtol=1e-4, atol=1e-5)
