"""nanogpt serve: the batched engine, the OpenAI-compatible API, the explainer views, a real server.

A tiny random character model in a temporary run folder; every server binds 127.0.0.1 on a
free port, every request is bounded, and every server is stopped by its fixture.
"""

import contextlib
import os
import http.client
import json
import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from nanogpt.config import GPTConfig  # noqa: E402
from nanogpt.generate import SamplingParams, generate_stream  # noqa: E402
from nanogpt.model import GPT  # noqa: E402
from nanogpt.serve.api import Limits, create_app, load_server  # noqa: E402
from nanogpt.serve.engine import CompletionSpec, Engine, Finish, QueueFull, Token, run_to_end  # noqa: E402

CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def tiny_model(vocab_size, block_size=48, seed=0, std=0.1):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder: a checkpoint of a tiny random char model and a metrics.jsonl."""
    from nanogpt.checkpoint import save_checkpoint
    from nanogpt.tokenizer import CharTokenizer

    tok = CharTokenizer(sorted(CHARS))
    model = tiny_model(tok.vocab_size)
    info = {"iter": 2, "config": {"model": model.config.to_dict()}, "tokenizer": tok.to_dict(), "val_loss": 3.0}
    run = tmp_path_factory.mktemp("serve") / "run"
    save_checkpoint(run, model, {}, info, is_best=True)
    rows = [{"kind": "train", "iter": 1, "loss": 4.1}, {"kind": "eval", "iter": 2, "train_loss": 4.0, "val_loss": 3.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


@pytest.fixture(scope="module")
def server(run_dir):
    s = load_server(str(run_dir), "cpu", "float32", max_batch=4, max_queue=8)
    s.limits = Limits(max_prompt_tokens=s.engine.block_size, max_tokens=200, max_n=4)
    s.engine.start()
    yield s
    s.engine.stop()


@pytest.fixture(scope="module")
def client(server):
    with TestClient(create_app(server)) as c:
        yield c


def tokens_of(events):
    return [e.id for e in events if isinstance(e, Token)]


# --------------------------------------------------------------------------------------------
# The engine


def test_engine_alone_equals_generate_same_seed(server):
    eng = server.engine
    ids = eng.tokenizer.encode("hello there")
    spec = CompletionSpec(tuple(ids), 70, SamplingParams(0.9, 20, None), seed=3)  # 11 + 70 > 48: the window moves
    got = tokens_of(run_to_end(eng, [spec])[0])
    gen = torch.Generator().manual_seed(3)
    ref = generate_stream(eng.model, torch.tensor([ids]), 70, 0.9, 20, None, generator=gen, vocab_limit=eng.vocab_limit)
    assert got == [int(t) for t in ref]


def test_engine_batched_equals_alone_token_for_token(server):
    eng = server.engine
    enc = eng.tokenizer.encode
    specs = [
        CompletionSpec(tuple(enc(p)), n, SamplingParams(t, k, tp), seed=s)
        for p, n, t, k, tp, s in [("ab", 30, 1.0, None, None, 1), ("hello there", 60, 0.9, 20, None, 3),
                                  ("x", 50, 1.2, None, 0.9, 7), ("the king is dead", 20, 0.0, None, None, 9),
                                  ("zz", 45, 1.0, 5, 0.8, 11), ("Once", 25, 0.7, None, None, 13)]
    ]
    # six requests on four rows: two wait, then join at step boundaries as others leave
    together = run_to_end(eng, specs)
    for spec, events in zip(specs, together):
        alone = run_to_end(eng, [spec])[0]
        assert tokens_of(events) == tokens_of(alone)
        assert len(tokens_of(events)) == spec.max_tokens and events[-1].reason == "length"


def test_engine_cancel_frees_the_row_and_queue_limit(server, run_dir):
    eng = server.engine
    box = []
    handle = eng.submit(CompletionSpec((1, 2, 3), 200, seed=0), box.append)
    deadline = time.time() + 10
    while len([e for e in box if isinstance(e, Token)]) < 3 and time.time() < deadline:
        time.sleep(0.01)
    handle.cancel()
    while not (box and isinstance(box[-1], Finish)) and time.time() < deadline:
        time.sleep(0.01)
    assert box[-1].reason == "cancelled" and box[-1].completion_tokens < 200
    assert eng.load()["active"] == 0
    idle = Engine(eng.model, eng.tokenizer, max_batch=1, max_queue=0)  # not started: nothing leaves the queue
    idle.submit(CompletionSpec((1,), 5), lambda e: None)
    with pytest.raises(QueueFull, match="busy"):
        idle.submit(CompletionSpec((1,), 5), lambda e: None)


# --------------------------------------------------------------------------------------------
# The API (in-process)


def post(client, **body):
    return client.post("/v1/completions", json=body)


def test_models_health_and_basic_completion(client, server):
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["run"] and models["object"] == "list"
    assert client.get("/health").json()["status"] == "ok"
    r = post(client, model="run", prompt="hello", max_tokens=7, n=2, seed=5)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and len(body["choices"]) == 2
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" and len(c["text"]) == 7 for c in body["choices"])  # char model: 1 token = 1 char
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 14, "total_tokens": 24}


def test_seeds_prompt_lists_and_echo(client):
    a = post(client, prompt="the ", max_tokens=20, seed=1).json()["choices"][0]["text"]
    assert post(client, prompt="the ", max_tokens=20, seed=1).json()["choices"][0]["text"] == a
    assert post(client, prompt="the ", max_tokens=20, seed=2).json()["choices"][0]["text"] != a
    both = post(client, prompt=["the ", "a"], max_tokens=20, seed=1).json()["choices"]
    assert both[0]["text"] == a and len(both) == 2
    ids = post(client, prompt=[[45, 33, 30, 1]], max_tokens=3, seed=0).json()["choices"]
    assert len(ids[0]["text"]) == 3
    echoed = post(client, prompt="the ", max_tokens=20, seed=1, echo=True).json()["choices"][0]["text"]
    assert echoed == "the " + a


def test_stop_strings_cut_the_text(client):
    full = post(client, prompt="ab", max_tokens=40, seed=4, temperature=1.0).json()["choices"][0]["text"]
    stop = full[10:12]
    cut = post(client, prompt="ab", max_tokens=40, seed=4, temperature=1.0, stop=[stop, "@@@"]).json()["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full[: full.find(stop)]


def test_logprobs_are_the_models(client, server):
    model, tok = server.engine.model, server.engine.tokenizer
    body = post(client, prompt="hello", max_tokens=3, temperature=0, logprobs=3).json()["choices"][0]
    lp = body["logprobs"]
    assert len(lp["tokens"]) == 3 and len(lp["top_logprobs"][0]) == 3
    with torch.no_grad():
        logits, _ = model(torch.tensor([tok.encode("hello")]))
    ref = torch.log_softmax(logits[0, -1, : tok.vocab_size].float(), -1)
    assert lp["token_logprobs"][0] == pytest.approx(float(ref.max()), abs=1e-5)  # greedy: the top token
    assert max(lp["top_logprobs"][0].values()) == pytest.approx(lp["token_logprobs"][0], abs=1e-6)
    assert "".join(lp["tokens"]) == body["text"] and lp["text_offset"] == [0, 1, 2]
    echo = post(client, prompt="hello", max_tokens=2, temperature=0, logprobs=1, echo=True).json()["choices"][0]["logprobs"]
    assert echo["tokens"][:5] == list("hello") and echo["token_logprobs"][0] is None and len(echo["tokens"]) == 7
    first = torch.log_softmax(logits[0, 0, : tok.vocab_size].float(), -1)[tok.encode("e")[0]]
    assert echo["token_logprobs"][1] == pytest.approx(float(first), abs=1e-5)


def read_sse(lines):
    events = []
    for line in lines:
        if line:
            assert line.startswith("data: ")
            events.append(line[len("data: "):])
    return events


def test_streaming_events_equal_the_plain_response(client):
    plain = post(client, prompt="to be", max_tokens=25, seed=8, n=2).json()
    body = {"prompt": "to be", "max_tokens": 25, "seed": 8, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    for i in range(2):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == plain["choices"][i]["text"]
        assert [c["finish_reason"] for c in mine][-1] == "length" and all(c["finish_reason"] is None for c in mine[:-1])
        assert all(c["object"] == "text_completion" for c in chunks)


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"prompt": "hi", "max_tokens": 201}, 400, "at most 200"),
    ({"prompt": "hi", "n": 5}, 400, "at most 4"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ({"prompt": "x" * 49}, 413, "at most 48"),
    ({"prompt": "hi", "model": "gpt-5"}, 404, "does not exist"),
    ({"prompt": "h\u00e9"}, 400, "not in the"),
    ({"prompt": [[999]]}, 400, "token ids"),
])
def test_errors_are_openai_json_with_status(client, body, status, words):
    r = post(client, **body)
    assert r.status_code == status
    err = r.json()["error"]
    assert words in err["message"] and set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    assert post(client, prompt="hi", max_tokens=2).status_code == 200  # the server lives on


def test_malformed_json_unknown_route_and_api_key(server):
    assert TestClient(create_app(server)).post("/v1/completions", content=b"{nope").status_code == 400
    server.api_key = "sekret"
    try:
        with TestClient(create_app(server)) as c:
            r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            ok = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers={"Authorization": "Bearer sekret"})
            assert ok.status_code == 200
            assert c.get("/health").status_code == 200  # health and the page stay open
            assert c.get("/nothing").json()["error"]["type"] == "not_found"
    finally:
        server.api_key = None


# --------------------------------------------------------------------------------------------
# The explainer views


def test_views(client, server):
    model, tok = server.engine.model, server.engine.tokenizer
    toks = client.post("/api/tokens", json={"text": "to be"}).json()
    assert [t["piece"] for t in toks["tokens"]] == list("to be") and toks["tokens"][0]["id"] == tok.encode("t")[0]
    d1 = client.post("/api/next", json={"text": "to be", "temperature": 1.0, "top_k": 3}).json()
    d2 = client.post("/api/next", json={"text": "to be", "temperature": 2.0, "top_k": 3}).json()
    assert d1["kept"] == 3 and [c["cut"] for c in d1["candidates"][:4]] == [False, False, False, True]
    assert sum(c["sampled_prob"] for c in d1["candidates"]) == pytest.approx(1.0, abs=1e-5)
    assert d2["candidates"][0]["prob"] < d1["candidates"][0]["prob"]  # hotter: flatter
    shapes = client.post("/api/shapes", json={"text": "to be"}).json()
    assert shapes["dims"]["T"] == 5 and shapes["parameters"]["total"] == model.num_params()
    att = client.post("/api/attention", json={"text": "to be", "layer": 1}).json()
    assert att["n_head"] == 2 and [len(r) for r in att["maps"][0]] == [1, 2, 3, 4, 5]  # the causal triangle
    assert all(sum(r) == pytest.approx(1.0, abs=1e-3) for h in att["maps"] for r in h)
    lens = client.post("/api/lens", json={"text": "to be", "k": 3}).json()
    assert [l["after"] for l in lens["layers"]] == ["embeddings", "block 0", "block 1"]
    with torch.no_grad():
        logits, _ = model(torch.tensor([tok.encode("to be")]))
    assert lens["layers"][-1]["top"][0]["id"] == int(logits[0, -1, : tok.vocab_size].argmax())
    assert client.post("/api/attention", json={"text": "hi", "layer": 7}).status_code == 400
    curves = client.get("/api/curves").json()
    assert [r["kind"] for r in curves["rows"]] == ["train", "eval"]
    assert client.get("/").status_code == 200 and "nanogpt" in client.get("/").text


# --------------------------------------------------------------------------------------------
# A real server on 127.0.0.1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(server):
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    assert srv.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        srv.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def live(server):
    with running(server) as where:
        yield where


def test_openai_client_plain_and_streaming(live, client):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=live[0] + "/v1", api_key="none", max_retries=0, timeout=30)
    assert [m.id for m in api.models.list().data] == ["run"]
    done = api.completions.create(model="run", prompt="hello", max_tokens=12, seed=3, temperature=0.8)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 12
    assert done.choices[0].text == post(client, prompt="hello", max_tokens=12, seed=3, temperature=0.8).json()["choices"][0]["text"]
    pieces = [c.choices[0].text for c in api.completions.create(model="run", prompt="hello", max_tokens=12, seed=3,
                                                                temperature=0.8, stream=True)]
    assert "".join(pieces) == done.choices[0].text
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="other", prompt="hi", max_tokens=1)


def test_disconnect_mid_stream_frees_the_row(live, server, monkeypatch):
    eng = server.engine
    forward = eng._forward

    def slow_forward():  # 10 ms a step: 200 tokens would take 2 s
        time.sleep(0.01)
        forward()

    monkeypatch.setattr(eng, "_forward", slow_forward)
    start = eng.steps
    conn = http.client.HTTPConnection("127.0.0.1", live[1], timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 200, "stream": True}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.readline().startswith(b"data: ")
    conn.close()  # leave mid-stream
    deadline = time.time() + 10
    while eng.load()["active"] and time.time() < deadline:
        time.sleep(0.02)
    assert eng.load()["active"] == 0
    assert eng.steps - start < 100  # it stopped long before max_tokens
    time.sleep(0.1)
    steps = eng.steps
    time.sleep(0.2)
    assert eng.steps == steps  # nothing is decoded for nobody


# --------------------------------------------------------------------------------------------
# The page in a real headless browser (Debian's chromium, driven by Playwright)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def set_slider(page, selector, value):
    page.eval_on_selector(selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", str(value))


def first_prob(page):
    return page.get_attribute("#next-bars .bar", "data-prob")


def test_page_in_headless_chromium(live, server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install 'nanogpt[test]')")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); .ci/run installs it where apt works")
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.set_default_timeout(20000)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live[0] + "/")
            page.wait_for_selector("#next-bars .bar")
            assert "2 layers" in page.inner_text("#model-info")
            # type a prompt, generate 40 tokens, and see them arrive
            page.fill("#prompt", "the king said")
            set_slider(page, "#max_tokens", 40)
            page.click("#generate")
            page.wait_for_function("document.getElementById('prompt').value.length >= 'the king said'.length + 40")
            page.wait_for_function("!document.getElementById('generate').disabled")
            assert page.input_value("#prompt").startswith("the king said")
            # move the temperature: the distribution changes; top-k cuts candidates
            page.wait_for_selector("#next-bars .bar")
            before = first_prob(page)
            set_slider(page, "#temperature", 1.9)
            page.wait_for_function(f"document.querySelector('#next-bars .bar').dataset.prob !== '{before}'")
            assert float(first_prob(page)) < float(before)  # hotter: the favourite loses mass
            set_slider(page, "#top_k", 3)
            page.wait_for_function("document.querySelectorAll('#next-bars .bar.cut').length >= 10")
            assert page.locator("#next-bars .bar:not(.cut)").count() == 3
            # one more token with "next token"
            length = len(page.input_value("#prompt"))
            page.click("#step")
            page.wait_for_function(f"document.getElementById('prompt').value.length === {length + 1}")
            page.screenshot(path=str(tmp_path / "next.png"))
            # attention: one head, then all heads of a layer as small multiples; hover a token
            page.click("[data-tab=attention]")
            page.wait_for_selector("#att-maps canvas")
            page.select_option("#att-head", "all")
            assert page.locator("#att-maps canvas").count() == server.engine.model.config.n_head
            page.hover("#att-tokens .tok >> nth=5")
            page.wait_for_selector("#att-tokens .tok.focus")
            page.screenshot(path=str(tmp_path / "attention.png"))
            # the logit lens: embeddings + one row per block
            page.click("[data-tab=lens]")
            page.wait_for_selector(".lens tr >> nth=3")
            assert page.locator(".lens tr").count() == 1 + 1 + server.engine.model.config.n_layer
            for tab, selector in [("tokens", "#view-tokens .tok"), ("shapes", "#view-shapes table"), ("curves", "#view-curves svg")]:
                page.click(f"[data-tab={tab}]")
                page.wait_for_selector(selector)
            page.click("[data-tab=next]")
            page.wait_for_selector("#next-bars .bar.cut")
            shot = os.environ.get("NANOGPT_SCREENSHOT")  # e.g. docs/serve.png, to refresh the README's picture
            page.screenshot(path=shot or str(tmp_path / "serve.png"))
        finally:
            browser.close()
    assert errors == [], errors


def test_long_text_views_and_truncated_prompt(client):
    long = "abcdefghij" * 6  # 60 characters, the context is 48
    assert client.post("/api/tokens", json={"text": long}).json()["tokens"][0]["piece"] == long[-48]
    assert post(client, prompt=long, max_tokens=2).status_code == 413
    r = post(client, prompt=long, max_tokens=2, truncate_prompt_tokens=48, seed=1)
    assert r.json()["usage"]["prompt_tokens"] == 48
    assert r.json()["choices"][0]["text"] == post(client, prompt=long[-48:], max_tokens=2, seed=1).json()["choices"][0]["text"]


def test_modern_block_batched_and_alone_equal_generate():
    from nanogpt.tokenizer import CharTokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(arch="modern", block_size=40, vocab_size=len(CHARS), n_layer=2, n_head=2, n_embd=32,
                          tie_embeddings=False))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() >= 2 else p.uniform_(0.5, 1.5)
    eng = Engine(model.eval(), CharTokenizer(sorted(CHARS)), max_batch=3, max_queue=4)
    enc = eng.tokenizer.encode
    specs = [CompletionSpec(tuple(enc(p)), n, SamplingParams(t, None, None), seed=s)
             for p, n, t, s in [("ab", 50, 1.0, 1), ("hello", 30, 0.0, 2), ("the", 45, 0.8, 3)]]
    eng.start()
    try:
        together = run_to_end(eng, specs)
    finally:
        eng.stop()
    for spec, events in zip(specs, together):
        gen = torch.Generator().manual_seed(spec.seed)
        ref = generate_stream(eng.model, torch.tensor([list(spec.prompt_ids)]), spec.max_tokens, spec.sampling.temperature,
                              None, None, generator=gen, vocab_limit=eng.vocab_limit)
        assert tokens_of(events) == [int(t) for t in ref]  # batched rows at their own rotary positions
