"""The rollout worker's pipe, written by a real process: a batch cut off inside its message is never handed on, and a
writer frozen inside a message still lets the trainer's wait end in one line (`rollout.worker_timeout_s`)."""

from __future__ import annotations

import multiprocessing
import os
import struct
import threading
import time

import pytest
import torch

from mmrl.errors import UserError
from mmrl.rl.async_rollout import AsyncRollout
from mmrl.rl.worker_pipe import PipeEnded, PipeReader, send_whole

CTX = multiprocessing.get_context("fork")  # the child only writes bytes: no need for a fresh interpreter


def _whole_then_half(writer, then: str) -> None:
    """One whole message, then a header that promises 1000 bytes followed by 10 of them; then die or freeze."""
    send_whole(writer, "whole")
    os.write(writer.fileno(), struct.pack("!i", 1000) + b"x" * 10)
    if then == "freeze":
        time.sleep(120)
    os._exit(9)


def _writer(then: str):
    reader, writer = CTX.Pipe(duplex=False)
    process = CTX.Process(target=_whole_then_half, args=(writer, then), daemon=True)
    process.start()
    writer.close()  # the child holds the only write end, as the rollout worker does
    return process, PipeReader(reader)


def _rollout(process, pipe: PipeReader, timeout_s: float) -> AsyncRollout:
    rollout = AsyncRollout(
        max_staleness=1,
        timeout_s=timeout_s,
        start=0,
        trainable=[],
        process=process,
        weights_out=CTX.Queue(),
        batches_in=pipe,
    )
    rollout.ready = True  # past the first batch, whose wait includes the worker's start
    assert pipe.get(10) == "whole"  # what came whole is handed on
    return rollout


def test_a_message_cut_by_the_writers_death_is_never_handed_on():
    process, pipe = _writer("die")
    assert pipe.get(10) == "whole"
    end = pipe.get(10)
    assert isinstance(end, PipeEnded) and isinstance(end.error, OSError)  # not a message, not a partial one
    process.join(10)
    pipe.close()

    process, pipe = _writer("die")
    with pytest.raises(UserError, match=r"died \(exit code 9\) while sending step 1's groups") as error:
        _rollout(process, pipe, timeout_s=30).take(1)
    assert "\n" not in str(error.value)


def test_a_writer_frozen_inside_a_message_times_out_in_one_line():
    process, pipe = _writer("freeze")
    rollout = _rollout(process, pipe, timeout_s=1)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"no groups for step 1 within rollout.worker_timeout_s=1 s"):
        rollout.take(1)  # a `recv` in the trainer would wait here for the 990 bytes that never come
    assert time.monotonic() - started < 15
    assert not process.is_alive()  # stopped with the run


def _send_tensor_and_die(writer) -> None:
    send_whole(writer, {"logprobs": torch.arange(1000.0)})
    os._exit(0)


def test_a_whole_batch_stays_readable_after_its_writer_died():
    """The worker may die right after sending a batch (its next rollout crashed): the batch it sent whole is still
    trained on. Tensors sent through torch's shared-memory pickling would be handles into the dead process."""
    reader, writer = CTX.Pipe(duplex=False)
    process = CTX.Process(target=_send_tensor_and_die, args=(writer,), daemon=True)
    process.start()
    writer.close()
    process.join(30)
    assert process.exitcode == 0
    pipe = PipeReader(reader)  # starts reading only now, with the writer gone
    got = pipe.get(10)
    assert isinstance(got, dict) and float(got["logprobs"].sum()) == 499500.0
    assert isinstance(pipe.get(10), PipeEnded)
    pipe.close()


def test_a_batch_of_views_sends_each_views_elements_not_its_whole_base():
    """A step's groups are row views of one completions tensor: plain pickle would write the whole base once per
    group (N groups: N times the step's tensors). Each view arrives with its own values, and a tensor reached twice
    (a prompt's pixels, its recorded image features) is still one tensor."""
    base = torch.arange(16 * 8 * 256, dtype=torch.int64).reshape(16 * 8, 256)
    pixels = torch.rand(3, 4)
    views = [{"completion_ids": base[i * 8:(i + 1) * 8], "pixels": pixels, "again": pixels} for i in range(16)]
    views.append({"columns": base[:, ::2], "broadcast": torch.ones(1).expand(5)})
    reader, writer = multiprocessing.Pipe(duplex=False)
    received: list[bytes] = []
    thread = threading.Thread(target=lambda: received.append(reader.recv_bytes()))  # a pipe holds 64 KiB unread
    thread.start()
    send_whole(writer, views)
    thread.join(30)
    payload = received[0]
    assert len(payload) < 2.5 * base.numel() * base.element_size()  # each row once, the columns view once: ~1.5x
    writer.close()
    reader.close()
    import pickle

    got = pickle.loads(payload)
    for i, item in enumerate(got[:16]):
        assert torch.equal(item["completion_ids"], base[i * 8:(i + 1) * 8])
        assert item["completion_ids"].untyped_storage().nbytes() == 8 * 256 * 8
        assert item["pixels"] is got[0]["pixels"] and torch.equal(item["pixels"], pixels)
    assert torch.equal(got[16]["columns"], base[:, ::2]) and torch.equal(got[16]["broadcast"], torch.ones(5))
