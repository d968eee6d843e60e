"""The trainer's end of the rollout worker's pipe, read by a thread of its own.

`Connection.recv` blocks until a whole message is in: a worker frozen halfway through sending a batch (stopped,
swapped out, stuck in a write) would hold a trainer that called it forever, and its hang timeout would never fire. A
reader thread takes that wait instead; the trainer only ever looks at whole messages, with a timeout. A message cut
off by the worker's death surfaces as `PipeEnded` (with the error, when it was cut inside a message): nothing of it
is handed on.

A message is plain pickle bytes (`send_whole`), the tensors' data inside it: `Connection.send` would pickle with
torch's shared-memory reducers, whose tensors are handles the receiver can only open while the sender lives, so a
worker that died right after sending a whole batch left it unreadable (the run then stopped one step early).
Plain pickle writes a tensor's whole storage, though, and a view (a group's rows of the step's completions, a split
of image features) shares its base's: each view would carry the whole base, so a step of N groups would send (and
the trainer hold) N copies of the step's tensors. A view is therefore sent as a compact copy of its own elements.
"""

from __future__ import annotations

import io
import pickle
import queue
import threading
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PipeEnded:
    """The pipe closed: `error` None at a message boundary (the writer exited), else what broke the message."""

    error: BaseException | None = None


class _WholePickler(pickle.Pickler):
    """Plain pickle, a view written as a compact copy of its own elements (see the module's note)."""

    def reducer_override(self, obj: Any) -> Any:
        if (type(obj) is torch.Tensor and obj.layout is torch.strided and not obj.requires_grad
                and not getattr(obj, "__dict__", None)  # attributes set on it would not be on its copy
                and obj.untyped_storage().nbytes() > obj.numel() * obj.element_size()):
            # Returned as the original's reduction: the pickle memo still writes one object that is reached twice.
            return obj.clone().__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return NotImplemented


def send_whole(connection: Any, item: Any) -> None:
    """Send `item` as one message that needs nothing of the sender once written (see the module's note)."""
    buffer = io.BytesIO()
    _WholePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(item)
    connection.send_bytes(buffer.getbuffer())


class PipeReader:
    """Whole messages of a one-way pipe, in order, through `get(timeout)`."""

    def __init__(self, connection: Any, name: str = "mmrl-pipe-reader") -> None:
        self.connection = connection
        self._items: queue.Queue = queue.Queue()
        # A daemon: a reader still waiting on a frozen writer must not hold the trainer's exit.
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                item = pickle.loads(self.connection.recv_bytes())
            except EOFError:
                self._items.put(PipeEnded())
                return
            except BaseException as exc:  # noqa: BLE001 - a truncated or unreadable message: handed on as the end
                self._items.put(PipeEnded(exc))
                return
            self._items.put(item)

    def get(self, timeout: float) -> Any:
        """The next whole message, a `PipeEnded`, or None when none came within `timeout` seconds."""
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self, wait_s: float = 5.0) -> None:
        """Close the pipe once its writer is gone (the thread then sees the end; closing an fd another thread is
        reading would not wake it, and its number could be reused meanwhile)."""
        self._thread.join(wait_s)
        if not self._thread.is_alive():
            self.connection.close()
