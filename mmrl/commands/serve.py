"""`mmrl serve --model PATH|preset`: an OpenAI-compatible chat-completions server on 127.0.0.1."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from mmrl.commands import add_command
from mmrl.errors import UserError

EXAMPLES = """  mmrl serve --model tiny                          # http://127.0.0.1:8000/v1
  mmrl serve --model runs/quickstart/grpo/checkpoints/step-200 --port 8001
  mmrl serve --model Qwen/Qwen2.5-VL-3B-Instruct --max-queue 16 --max-tokens 1024
"""


def register(subparsers, name: str) -> None:
    parser = add_command(subparsers, name, "serve a model over the OpenAI chat-completions API",
                         "Serve a checkpoint, preset or hub model at http://HOST:PORT/v1 (/v1/models, "
                         "/v1/chat/completions with images, streaming, n, seed, temperature, max_tokens, stop). "
                         "Any OpenAI client can use it, and so can mmrl's generation layer "
                         "(mmrl.generation.load_backend('http://HOST:PORT/v1')).",
                         EXAMPLES)
    parser.add_argument("--model", required=True, help="checkpoint directory, preset name (tiny, small...) or hub id")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests admitted at once; more are answered 429 (default: 64)")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="new tokens when a request gives no max_tokens (default: 256)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="weights dtype")
    parser.add_argument("--image-dir", action="append", default=[], metavar="DIR",
                        help="a directory clients may name local image files in (repeatable); by default only data "
                        "URLs are accepted, so a client cannot make the server open files")
    parser.add_argument("--served-name", default=None, help="model id clients use (default: the --model value)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from mmrl.generation.server import create_app
    except ModuleNotFoundError as err:
        raise UserError(f"mmrl serve needs {err.name}: pip install 'mmrl[serve]'") from None
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535 (got {args.port})")
    if args.max_queue < 1 or args.max_tokens < 1:
        raise UserError("--max-queue and --max-tokens must be >= 1")
    from mmrl.generation import load_backend

    for directory in args.image_dir:  # a typo would refuse every image as "outside the allowed directories"
        if not Path(directory).is_dir():
            raise UserError(f"--image-dir {directory}: no such directory; give an existing one")
    if args.model.startswith(("http://", "https://")):
        raise UserError("--model: give a checkpoint, preset or hub id to serve (a URL is already a server)")
    _check_port_free(args.host, args.port)  # before minutes of model loading, not after
    backend = load_backend(args.model, device=args.device, dtype=args.dtype)
    name = args.served_name or args.model
    app = create_app(backend, name, max_queue=args.max_queue, default_max_tokens=args.max_tokens,
                     image_dirs=args.image_dir)
    if not _is_loopback(args.host):
        print(f"warning: binding {args.host} exposes the model to the network without authentication")
    print(f"serving '{name}' at http://{args.host}:{args.port}/v1 (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UserError(f"--host {host}: not an address of this machine") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); pick another port") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
