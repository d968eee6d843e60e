"""`mmrl serve`: an OpenAI-compatible chat-completions server over a generation backend (FastAPI + uvicorn).

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (text and `image_url` parts as data URLs or local files,
`stream`, `n`, `seed`, `temperature`, `top_p`, `max_tokens`, `stop`, `logprobs`; vLLM's `top_k`, `min_tokens` and
`stop_token_ids` too). Requests wait in a bounded queue (429 when it is full); a malformed request or an unreadable
image is answered 400 with an OpenAI-style JSON error and the server keeps serving.

The content of an answer is the model's whole turn: where the chat template's generation prompt already opened a
reasoning block (`<|im_start|>assistant\n<think>\n`, `mmrl.models.interface`), that opened part comes first (streamed
as the first delta), so a client sees `<think>…</think><answer>…</answer>` and mmrl's rewards score it as training did.

>>> app = create_app(backend, "tiny")  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ConfigDict, Field, ValidationError

from mmrl.config.base import NumbersNotBools
from mmrl.generation.hf_context import check_context
from mmrl.generation.openai_format import RequestError, messages_to_prompt
from mmrl.generation.types import Completion, GenerationBackend, Prompt, SamplingParams
from mmrl.models.interface import interface_of_backend

# A request's new-token budget is bounded: one request must not hold a worker for hours.
MAX_NEW_TOKENS = 32768

log = logging.getLogger(__name__)


class ChatRequest(NumbersNotBools):
    """The fields of an OpenAI chat-completions request this server honours (unknown fields are ignored); `true` or
    `false` for a number is a 400 (pydantic's lax mode would read `"n": true` as 1)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Any]
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    min_tokens: int = Field(0, ge=0)
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None  # a negative id would never match: a 400
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # torch seeds are 64-bit: a bigger one is a 400
    stream: bool = False
    logprobs: bool = False
    # vLLM's extension (e.g. {"enable_thinking": false} for Qwen3): not honoured here, so refused rather than ignored
    chat_template_kwargs: dict[str, Any] | None = None

    def params(self, default_max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        max_new = self.max_completion_tokens or self.max_tokens or default_max_tokens
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=max_new, min_new_tokens=min(self.min_tokens, max_new),
                              stop=tuple(stop), stop_token_ids=tuple(self.stop_token_ids or ()), seed=self.seed,
                              logprobs=self.logprobs)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status)


class _Queue:
    """Counts requests admitted and not finished; refuses past `limit` (the caller answers 429)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0  # requests answered 429 so far
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                self.refused += 1
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.active -= 1


def _usage(prompt_tokens: int, completions: list[Completion]) -> dict[str, int]:
    generated = sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated}


def create_app(backend: GenerationBackend, model_name: str, *, max_queue: int = 64, default_max_tokens: int = 256,
               workers: int = 4, image_dirs: Sequence[Path] = ()) -> FastAPI:
    """The FastAPI application serving `backend` under the model id `model_name`; local image files are read only
    under `image_dirs` (none by default: clients send data URLs)."""
    image_dirs = [Path(d) for d in image_dirs]
    queue = _Queue(max_queue)
    # Generation blocks: it runs in worker threads (the HF backend itself serialises calls on its model).
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmrl-serve")
    created = int(time.time())
    opened = interface_of_backend(backend).turn_prefix  # "" unless the template opens the turn's reasoning block

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="mmrl serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.queue = queue

    def token_texts(ids: list[int]) -> list[str]:
        tokenizer = getattr(backend, "tokenizer", None)
        return tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else ["" for _ in ids]

    def choice(index: int, completion: Completion) -> dict[str, Any]:
        logprobs = None
        if completion.logprobs is not None:
            logprobs = {"content": [{"token": t, "logprob": lp, "bytes": None, "top_logprobs": []}
                                    for t, lp in zip(token_texts(completion.token_ids), completion.logprobs)]}
        return {"index": index, "message": {"role": "assistant", "content": opened + completion.text},
                "finish_reason": completion.finish_reason, "logprobs": logprobs}

    def prompt_tokens(encoded: Any) -> int:
        ids = encoded.get("input_ids") if isinstance(encoded, dict) else None
        return int(ids.shape[-1]) if ids is not None else 0

    def prepare(body: ChatRequest) -> tuple[Prompt | dict[str, Any], SamplingParams, int]:
        """Decode images and encode the prompt before generating, so a bad one is a 400, not a broken stream."""
        prompt = messages_to_prompt(body.messages, image_dirs)
        params = body.params(default_max_tokens)
        encode = getattr(backend, "encode", None)
        if encode is None:
            return prompt, params, 0
        encoded = encode(prompt)
        # Checked here too (the backend checks again): a stream's headers go out before the backend's first check.
        check_context(getattr(backend, "model", None), encoded, params.max_new_tokens, "prompt")
        return encoded, params, prompt_tokens(encoded)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "mmrl"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            # A browser page can POST text/plain to 127.0.0.1 without a preflight; only JSON clients get through.
            return _error(415, "send the request as application/json")
        try:
            body = ChatRequest.model_validate(json.loads(await request.body()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the request body is not valid JSON")
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, f"{where}: {first['msg']}")
        if body.model not in (None, "", model_name):
            return _error(404, f"model '{body.model}' is not served here; GET /v1/models lists '{model_name}'",
                          "not_found_error")
        if body.chat_template_kwargs:
            return _error(400, "chat_template_kwargs: not supported per request; this server renders every prompt "
                          "with its model's chat template as it is (an answer starts with what its generation prompt "
                          "opens, e.g. <think>)")
        if body.stream and body.n != 1:
            return _error(400, "n: streaming supports n=1 only")
        if not queue.enter():
            busy = _error(429, f"the server is busy ({queue.limit} requests queued); retry later", "rate_limit_error")
            busy.headers["retry-after"] = "1"  # clients (the openai one included) back off and retry
            return busy
        loop = asyncio.get_running_loop()
        try:
            prompt, params, n_prompt = await loop.run_in_executor(pool, prepare, body)
        except (RequestError, ValueError, OSError) as err:  # DataError is a ValueError: a too-long prompt, bad image
            queue.leave()
            return _error(400, str(err))
        except Exception as err:
            queue.leave()
            log.exception("mmrl serve: preparing a request failed")
            return _error(500, f"internal error: {type(err).__name__}", "server_error")
        request_id = "chatcmpl-" + uuid.uuid4().hex
        if body.stream:
            return StreamingResponse(_sse(backend, pool, queue, prompt, params, request_id, model_name, opened),
                                     media_type="text/event-stream")
        try:
            groups = await loop.run_in_executor(pool, backend.generate, [prompt], params)
        except (RequestError, ValueError) as err:
            return _error(400, str(err))
        except Exception as err:
            log.exception("mmrl serve: generation failed")
            return _error(500, f"internal error: {type(err).__name__}", "server_error")
        finally:
            queue.leave()
        completions = groups[0]
        return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
                "choices": [choice(i, c) for i, c in enumerate(completions)],
                "usage": _usage(n_prompt, completions)}

    return app


def _chunk(request_id: str, model: str, delta: dict[str, Any], finish: str | None) -> str:
    payload = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return f"data: {json.dumps(payload)}\n\n"


async def _sse(backend: GenerationBackend, pool: ThreadPoolExecutor, queue: _Queue, prompt: Any,
               params: SamplingParams, request_id: str, model: str, opened: str = "") -> AsyncIterator[str]:
    """Server-sent events of one streamed completion: role, content deltas, finish reason, [DONE]."""
    loop = asyncio.get_running_loop()
    stream: Iterator[str] = backend.stream(prompt, params)
    done = object()
    finish = "stop"

    def step() -> Any:
        nonlocal finish
        try:
            return next(stream)
        except StopIteration as stop:
            if isinstance(stop.value, Completion):
                finish = stop.value.finish_reason
            return done

    try:
        yield _chunk(request_id, model, {"role": "assistant", "content": ""}, None)
        if opened:
            yield _chunk(request_id, model, {"content": opened}, None)
        while (delta := await loop.run_in_executor(pool, step)) is not done:
            yield _chunk(request_id, model, {"content": delta}, None)
        yield _chunk(request_id, model, {}, finish)
    except Exception as err:  # headers are sent: say it in the stream, the server goes on
        log.exception("mmrl serve: streaming failed")
        yield f"data: {json.dumps({'error': {'message': f'internal error: {type(err).__name__}'}})}\n\n"
    finally:
        queue.leave()
        close = getattr(stream, "close", None)
        if close is not None:
            await loop.run_in_executor(pool, close)
    yield "data: [DONE]\n\n"
