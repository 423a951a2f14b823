"""A test helper: an ASGI app served by uvicorn in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn in a thread on a free port; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{free}"
    finally:
        server.should_exit = True
        thread.join(10)


def prompt_margin(model, tokenizer, prompt: str, max_new_tokens: int, specs=(), chat: bool = False) -> float:
    """``floats.greedy_margin`` of ``prompt`` generated alone as the server encodes it, steered by the SteerSpecs
    ``specs``: how far its greedy steps are from a tie."""
    from floats import greedy_margin

    from qwenscope.steer.generate import encode_prompt
    from qwenscope.steer.steer import steer

    inputs = encode_prompt(tokenizer, prompt, chat)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with steer(model, list(specs)) if specs else contextlib.nullcontext():
        return greedy_margin(model, inputs, max_new_tokens, pad_token_id=pad)
