"""The HTTP side of ``nanogpt serve``: an OpenAI-compatible completions API, the explainer JSON, the page.

Endpoints (all JSON; errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``):

* ``GET /health`` -- ``{"status": "ok", ...}`` with the engine's load;
* ``GET /v1/models`` -- the one model served;
* ``POST /v1/completions`` -- OpenAI's legacy completions: ``prompt`` (a string, a list of
  strings, a list of token ids or a list of such lists), ``max_tokens``, ``temperature``,
  ``top_p``, ``top_k`` (an extension), ``n``, ``stop``, ``seed`` (choice i of the request uses
  ``seed + i``), ``logprobs`` (0..20 alternatives), ``echo``,
  ``truncate_prompt_tokens`` (an extension, as vLLM's: keep the prompt's last N tokens), ``stream`` (server-sent events
  ending with ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk);
* ``GET /api/info``; ``POST /api/tokens``, ``/api/next``, ``/api/shapes``, ``/api/attention``,
  ``/api/lens`` with ``{"text": ...}`` and the view's settings; ``GET /api/curves``: the
  explainer views of :mod:`nanogpt.serve.views`;
* ``GET /`` -- the playground page (static files in this package, nothing from a CDN).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanogpt.errors import NanoGPTError
from nanogpt.generate import SamplingParams, encode_prompt
from nanogpt.serve import views
from nanogpt.serve.engine import CompletionSpec, Engine, Finish, QueueFull, Token

STATIC = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_prompt_tokens: int
    max_tokens: int = 1024
    max_n: int = 8


class APIError(Exception):
    """An error answered as OpenAI-style JSON with ``status``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class CompletionRequest(BaseModel):
    """The body of ``POST /v1/completions`` (unknown fields are ignored, as OpenAI-compatible servers do)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: Union[str, list[str], list[int], list[list[int]]] = ""
    max_tokens: int | None = Field(default=16, ge=1)
    temperature: float | None = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)  # extension (as vLLM): keep the prompt's last N tokens


class TextRequest(BaseModel):
    """The body of the view endpoints: the text and the view's settings."""

    model_config = ConfigDict(extra="ignore")
    text: str = ""
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    position: int | None = None
    layer: int = 0
    k: int = Field(default=20, ge=1, le=100)


class Server:
    """What the app serves: the engine, the model's name, limits, the run folder (for curves), the key."""

    def __init__(self, engine: Engine, model_name: str, limits: Limits | None = None, run_dir: str | None = None,
                 api_key: str | None = None, meta: dict[str, Any] | None = None) -> None:
        self.engine, self.model_name = engine, model_name
        self.limits = limits or Limits(engine.block_size)
        self.run_dir, self.api_key, self.meta = run_dir, api_key, meta or {}
        self.created = int(time.time())

    # -- requests -> completion specs ------------------------------------------------------

    def prompts(self, prompt: Any, keep_last: int | None = None) -> list[list[int]]:
        """The request's prompts as token ids (400 for a bad prompt, 413 for one beyond the limit)."""
        tok = self.engine.tokenizer
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            items = [prompt]
        else:
            items = list(prompt) or [""]
        out = []
        for item in items:
            if isinstance(item, str):
                try:
                    ids, _ = encode_prompt(tok, item)
                except NanoGPTError as e:
                    raise APIError(400, str(e), param="prompt") from None
            else:
                ids = list(item)
                bad = [t for t in ids if not 0 <= t < self.engine.vocab_limit]
                if bad or not ids:
                    raise APIError(400, f"token ids must be in 0..{self.engine.vocab_limit - 1} and not empty; got {bad[:5] or '[]'}", param="prompt")
            if keep_last is not None:
                ids = ids[-keep_last:]
            if len(ids) > self.limits.max_prompt_tokens:
                raise APIError(413, f"the prompt is {len(ids)} tokens; this server takes at most {self.limits.max_prompt_tokens} "
                               "(the model's context); shorten it", param="prompt", code="context_length_exceeded")
            out.append(ids)
        return out

    def specs(self, req: CompletionRequest) -> tuple[list[list[int]], list[CompletionSpec]]:
        """The prompts' ids and one spec per choice (prompt-major: choice p * n + i)."""
        if req.model not in (None, "", self.model_name):
            raise APIError(404, f"the model '{req.model}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")
        lim = self.limits
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if max_tokens > lim.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {lim.max_tokens}", param="max_tokens")
        prompts = self.prompts(req.prompt, req.truncate_prompt_tokens)
        if req.n * len(prompts) > lim.max_n:
            raise APIError(400, f"n x prompts is {req.n * len(prompts)}; this server allows at most {lim.max_n} completions per request", param="n")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise APIError(400, f"at most 4 stop strings, got {len(stop)}", param="stop")
        try:
            sampling = SamplingParams(1.0 if req.temperature is None else req.temperature, req.top_k, req.top_p)
        except NanoGPTError as e:
            raise APIError(400, str(e)) from None
        specs = []
        for p, ids in enumerate(prompts):
            for i in range(req.n):
                seed = None if req.seed is None else req.seed + p * req.n + i
                specs.append(CompletionSpec(tuple(ids), max_tokens, sampling, seed, tuple(stop), req.logprobs,
                                            prompt_logprobs=req.echo and req.logprobs is not None))
        return prompts, specs

    def submit_all(self, specs: list[CompletionSpec]) -> tuple[asyncio.Queue, list[Any]]:
        """Queue every choice; events arrive on one asyncio queue as (choice, event). 429 when full."""
        loop = asyncio.get_running_loop()
        box: asyncio.Queue = asyncio.Queue()
        handles = []
        try:
            for i, spec in enumerate(specs):
                handles.append(self.engine.submit(spec, lambda ev, i=i: loop.call_soon_threadsafe(box.put_nowait, (i, ev))))
        except QueueFull as e:
            for h in handles:
                h.cancel()
            raise APIError(429, str(e), type_="server_busy", code="queue_full") from None
        return box, handles

    # -- events -> OpenAI JSON --------------------------------------------------------------

    def logprobs_json(self, tokens: list[Token], prompt: list[int] | None, prompt_lp: list | None,
                      start_offset: int) -> dict[str, Any]:
        tok = self.engine.tokenizer
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        offset = start_offset
        for i, t in enumerate(prompt or []):
            text = views.piece(tok, t)
            out["tokens"].append(text)
            out["token_logprobs"].append(prompt_lp[i] if prompt_lp else None)
            out["top_logprobs"].append(None)
            out["text_offset"].append(offset)
            offset += len(text)
        for t in tokens:
            text = views.piece(tok, t.id)
            out["tokens"].append(text)
            out["token_logprobs"].append(t.logprob)
            out["top_logprobs"].append({views.piece(tok, a): lp for a, lp in (t.top or [])})
            out["text_offset"].append(offset)
            offset += len(text)
        return out

    def body(self, cid: str, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        out = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": self.model_name,
               "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out


def usage_of(prompts: list[list[int]], n: int, finishes: list[Finish]) -> dict[str, int]:
    prompt_tokens = sum(len(p) for p in prompts) * n
    completion = sum(f.completion_tokens for f in finishes)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


async def complete(server: Server, req: CompletionRequest) -> JSONResponse:
    """A whole (non-streamed) completion response."""
    prompts, specs = server.specs(req)
    box, handles = server.submit_all(specs)
    tokens: list[list[Token]] = [[] for _ in specs]
    finishes: list[Finish | None] = [None] * len(specs)
    try:
        while any(f is None for f in finishes):
            i, ev = await box.get()
            if isinstance(ev, Token):
                tokens[i].append(ev)
            else:
                finishes[i] = ev
    finally:
        for h in handles:
            h.cancel()
    errors = [f.error for f in finishes if f.reason == "error"]
    if errors:
        raise APIError(500, f"generation failed: {errors[0]}", type_="server_error")
    tok = server.engine.tokenizer
    choices = []
    for i, (spec, toks, fin) in enumerate(zip(specs, tokens, finishes)):
        prompt_text = tok.decode(list(spec.prompt_ids)) if req.echo else ""
        text = prompt_text + "".join(t.text for t in toks) + fin.text
        lp = None
        if req.logprobs is not None:
            lp = server.logprobs_json(toks, list(spec.prompt_ids) if req.echo else None, fin.prompt_logprobs, 0)
        choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": fin.reason})
    cid = f"cmpl-{uuid.uuid4().hex[:24]}"
    return JSONResponse(server.body(cid, choices, usage_of(prompts, req.n, finishes)))


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def stream(server: Server, req: CompletionRequest) -> StreamingResponse:
    """Server-sent events: one chunk per token per choice, a finish chunk per choice, ``[DONE]``."""
    prompts, specs = server.specs(req)
    box, handles = server.submit_all(specs)
    cid = f"cmpl-{uuid.uuid4().hex[:24]}"
    tok = server.engine.tokenizer

    def chunk(i: int, text: str, reason: str | None, lp: dict | None = None) -> str:
        return _sse(server.body(cid, [{"index": i, "text": text, "logprobs": lp, "finish_reason": reason}]))

    async def events():
        finishes: list[Finish | None] = [None] * len(specs)
        try:
            if req.echo:
                for i, spec in enumerate(specs):
                    yield chunk(i, tok.decode(list(spec.prompt_ids)), None)
            while any(f is None for f in finishes):
                i, ev = await box.get()
                if isinstance(ev, Token):
                    lp = server.logprobs_json([ev], None, None, 0) if req.logprobs is not None else None
                    yield chunk(i, ev.text, None, lp)
                    continue
                finishes[i] = ev
                if ev.reason == "error":
                    yield _sse({"error": {"message": f"generation failed: {ev.error}", "type": "server_error",
                                          "param": None, "code": None}})
                    break
                yield chunk(i, ev.text, ev.reason)
            if (req.stream_options or {}).get("include_usage") and all(finishes):
                yield _sse(server.body(cid, [], usage_of(prompts, req.n, finishes)))
            yield "data: [DONE]\n\n"
        finally:  # the client left (or we are done): free the rows at the next step
            for h in handles:
                h.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _view(server: Server, fn: Any, *args: Any, **kw: Any) -> dict[str, Any]:
    try:
        with server.engine.lock:
            return fn(*args, **kw)
    except NanoGPTError as e:
        raise APIError(413 if "at most" in str(e) else 400, str(e)) from None


def add_view_routes(app: FastAPI, server: Server) -> None:
    """The explainer endpoints under /api (plain ``def``: they run in the thread pool, holding the model lock)."""
    eng = server.engine
    model, tok = eng.model, eng.tokenizer

    def ids_of(text: str) -> list[int]:
        try:
            return views.encode_text(tok, text, eng.block_size)
        except NanoGPTError as e:
            raise APIError(400, str(e), param="text") from None

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"model": server.model_name, "config": model.config.to_dict(), "meta": server.meta,
                "tokenizer": getattr(tok, "name", type(tok).__name__), "limits": server.limits.__dict__,
                "has_curves": server.run_dir is not None, "auth": server.api_key is not None}

    @app.post("/api/tokens")
    def tokens(r: TextRequest) -> dict[str, Any]:
        return views.tokens_view(tok, ids_of(r.text))

    @app.post("/api/next")
    def next_token(r: TextRequest) -> dict[str, Any]:
        return _view(server, views.next_token_view, model, tok, ids_of(r.text), r.temperature, r.top_k, r.top_p, r.position, r.k)

    @app.post("/api/shapes")
    def shapes(r: TextRequest) -> dict[str, Any]:
        return _view(server, views.shapes_view, model, len(ids_of(r.text)))

    @app.post("/api/attention")
    def attention(r: TextRequest) -> dict[str, Any]:
        return _view(server, views.attention_view, model, tok, ids_of(r.text), r.layer)

    @app.post("/api/lens")
    def lens(r: TextRequest) -> dict[str, Any]:
        return _view(server, views.logit_lens_view, model, tok, ids_of(r.text), r.position, min(r.k, 10))

    @app.get("/api/curves")
    def curves() -> dict[str, Any]:
        try:
            return views.curves_view(server.run_dir)
        except NanoGPTError as e:
            raise APIError(404, str(e)) from None


def add_error_handlers(app: FastAPI) -> None:
    """Every error is OpenAI-style JSON with its status: never a traceback."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return APIError(400, f"{where or 'request'}: {first.get('msg', 'invalid request')}", param=where or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type_=kind).response()

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error").response()


def create_app(server: Server) -> FastAPI:
    """The FastAPI app over ``server``; its lifespan starts the engine (and stops it, if it started it)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        started_here = not server.engine.running
        server.engine.start()
        yield
        if started_here:  # an engine started by the caller is the caller's to stop
            server.engine.stop()

    app = FastAPI(title="nanogpt serve", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    add_error_handlers(app)

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        path = request.url.path
        if server.api_key and (path.startswith("/v1/") or path.startswith("/api/")):
            if request.headers.get("authorization", "") != f"Bearer {server.api_key}":
                return APIError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                                type_="authentication_error", code="invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": server.model_name, **server.engine.load()}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.created,
                                            "owned_by": "nanogpt", "context_length": server.engine.block_size}]}

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest) -> Any:
        return await (stream(server, req) if req.stream else complete(server, req))

    add_view_routes(app, server)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app



def load_server(source: str, device: str = "auto", dtype: str = "auto", name: str | None = None,
                limits: Limits | None = None, api_key: str | None = None, max_batch: int = 8,
                max_queue: int = 64, threads: str = "auto") -> Server:
    """Load ``source`` (anything ``nanogpt sample`` takes) and wrap it in an engine and a :class:`Server`.

    ``threads``: the ``--threads`` setting (see ``nanogpt.threads``); the engine's decode steps are its units.
    """
    import torch

    from nanogpt.checkpoint import load_model
    from nanogpt.device import setup_runtime
    from nanogpt.generate import prepare_for_sampling

    runtime = setup_runtime(device, dtype, "false", threads=threads)
    if runtime.dtype is torch.float16 and runtime.device.type == "cpu":
        raise NanoGPTError("float16 is not supported on CPU; use --dtype bfloat16 or float32")
    loaded = load_model(source, runtime.device)
    if loaded.tokenizer is None:
        raise NanoGPTError(f"{source} does not say which tokenizer it was trained with, so it cannot serve text")
    model = prepare_for_sampling(loaded.model, runtime.dtype)
    engine = Engine(model, loaded.tokenizer, max_batch=max_batch, max_queue=max_queue, threads=runtime.threads)
    run_dir = str(loaded.meta.get("source")) if loaded.meta.get("kind") == "run" else None
    model_name = name or Path(str(source).rstrip("/")).name or str(source)
    meta = {k: (v if isinstance(v, (int, float, str)) or v is None else str(v)) for k, v in loaded.meta.items()}
    meta["device"], meta["dtype"] = str(runtime.device), str(runtime.dtype).replace("torch.", "")
    return Server(engine, model_name, limits or Limits(engine.block_size), run_dir, api_key, meta)
