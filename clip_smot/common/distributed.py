"""torchrun: the process group, and how work is shared among processes (rank 0 writes)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import os
import socket
from typing import Any, Callable, Iterator, Sequence

import torch

from clip_smot.common.configs import flag_of
from clip_smot.common.errors import UserError, first_line
from clip_smot.common.locks import output_lock

__all__ = ["torchrun_env", "process_group", "batch_share", "every_rank", "same_on_every_rank", "same_options_on_every_rank",
           "peer_stopped_in_one_line",
           "writes_outputs", "writer_lock", "share_work"]


def torchrun_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) outside torchrun
    (a ``RANK`` left in the environment of one process is not read: that process writes).

    Raises:
        UserError: a variable that is no whole number, a rank outside [0, WORLD_SIZE), a
            MASTER_PORT that is no port, or, with WORLD_SIZE > 1, one of what torchrun sets
            missing (torch.distributed's traceback).
    """
    def number(name: str, default: str) -> int:
        text = os.environ.get(name, "") or default
        try:
            return int(text)
        except ValueError:
            raise UserError(f"${name} {text!r}: not a whole number (torchrun sets it; unset it outside torchrun)") from None

    world = number("WORLD_SIZE", "1")
    if world < 1:
        raise UserError(f"$WORLD_SIZE {world}: must be 1 or more (torchrun sets it; unset it outside torchrun)")
    if world == 1:
        return 0, 0, 1
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UserError(f"$WORLD_SIZE {world}: ${missing[0]} is not set; run under torchrun, which sets them, or unset "
                        "WORLD_SIZE")
    rank, local_rank = number("RANK", "0"), number("LOCAL_RANK", "0")
    if not (0 <= rank < world and 0 <= local_rank < world):
        raise UserError(f"$RANK {rank}, $LOCAL_RANK {local_rank}: not in [0, WORLD_SIZE {world}); run under torchrun, "
                        "which sets them")
    port = number("MASTER_PORT", "0")
    if not 0 < port < 65536:  # (torch.distributed's ValueError's traceback; 0, a free port, no other rank can find)
        raise UserError(f"$MASTER_PORT {port}: not a port (1 to 65535); run under torchrun, which sets it")
    return rank, local_rank, world


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[int, int, int]]:
    """torch.distributed's default process group while inside, under torchrun (WORLD_SIZE > 1).

    The backend is gloo on the CPU and ``cpu:gloo,cuda:nccl`` on CUDA: CUDA tensors travel by
    NCCL, Python objects (:func:`share_work`'s results) by gloo, from CPU memory. Leaving
    normally waits for every process (no rank tears the group down while another still uses
    it); the group is destroyed on the way out either way. Outside torchrun it does nothing.

    Yields:
        (rank, local rank, world size).
    """
    rank, local_rank, world = torchrun_env()
    started = world > 1 and not torch.distributed.is_initialized()
    if started:
        cuda = device != "cpu" and torch.cuda.is_available()
        address = f"$MASTER_ADDR {os.environ['MASTER_ADDR']}, $MASTER_PORT {os.environ['MASTER_PORT']}"
        try:  # (a name that does not resolve: every rank would retry for the group's 30 minutes)
            socket.getaddrinfo(os.environ["MASTER_ADDR"], None)
        except (OSError, UnicodeError) as e:
            raise UserError(f"{address}: the address cannot be found ({e}); run under torchrun, which sets "
                            "them") from None
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # (torchrun's agent listens there before it starts the processes; refused: it is gone, killed
            # while they started, and each would retry connecting for the group's 30 minutes, orphaned)
            try:
                socket.create_connection((os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])), 10).close()
            except ConnectionRefusedError:
                raise UserError(f"{address}: nothing listens there: the torchrun that started this process has "
                                "stopped") from None
            except OSError:  # (no answer in time, a network down: torch.distributed's own retries)
                pass
        try:
            torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
        # (a port another program holds: the store cannot listen there; torch 2.14 raises a
        # DistNetworkError, a RuntimeError, torch 2.5 and 2.6 a plain RuntimeError)
        except RuntimeError as e:
            raise UserError(f"{address}: the process group cannot start ({first_line(e)})") from None
    try:
        yield rank, local_rank, world
        if started:
            try:
                torch.distributed.barrier()
            except RuntimeError:
                raise _other_process_stopped(world) from None
    finally:
        if started and torch.distributed.is_initialized():
            gc.collect()  # what still holds the group (a DDP reducer in a reference cycle) goes while it lives
            torch.distributed.destroy_process_group()


def batch_share(n: int, batch_size: int, rank: int, world: int) -> range:
    """The indices of process ``rank``'s share of ``n`` items: a run of whole batches of
    ``batch_size``, the ranks' shares following each other in order. Every item falls in the
    same batch as in one process, so a batch's results do not depend on the number of processes."""
    batches = -(-n // batch_size)
    first, last = batches * rank // world, batches * (rank + 1) // world
    return range(min(first * batch_size, n), min(last * batch_size, n))


def every_rank(value: Any) -> list:
    """``value`` of every process of the torch.distributed process group, in rank order
    (``[value]`` outside one); the values travel pickled."""
    if not torch.distributed.is_initialized():
        return [value]
    out: list = [None] * torch.distributed.get_world_size()
    try:
        torch.distributed.all_gather_object(out, value)
    except RuntimeError:
        raise _other_process_stopped(len(out)) from None
    return out


def _other_process_stopped(world: int) -> UserError:
    """The error of a collective that failed (gloo's "Connection closed by peer", a timeout): a
    process that raised alone (a folder only it cannot list, a write only rank 0 makes) has
    stopped, and said why in its own line; this one stops too, in one line, not a traceback."""
    return UserError(f"another of the {world} processes stopped (its own error line says why) or no longer "
                     "answers; this one stops too")


@contextlib.contextmanager
def peer_stopped_in_one_line() -> Iterator[None]:
    """Inside, gloo's error of a collective whose peer process has gone ("Connection closed by
    peer", or reset: DDP's gradient all-reduce or broadcast of buffers in a training step, which
    are no :func:`every_rank`) is :func:`_other_process_stopped`'s one line; any other error is
    raised as it is."""
    try:
        yield
    except RuntimeError as e:
        if not torch.distributed.is_initialized() or "by peer" not in str(e):
            raise
        raise _other_process_stopped(torch.distributed.get_world_size()) from None


def same_on_every_rank(value: Any, what: str) -> None:
    """Raise the same UserError in every process when they hold other ``value``s: what each made
    of the files it read itself (their SHA-256, the model they built); ``what`` names them.
    Outside torchrun: nothing. A collective: every process of the group must call it."""
    values = every_rank(value)
    if any(v != values[0] for v in values[1:]):
        raise UserError(f"{what}: the {len(values)} processes do not agree on it (a file replaced while they "
                        "started? nodes with other versions?); run again once they do")


# options that may differ among the processes: how each works (its GPU, its decoding workers, its
# cache), and what names files, which each reads itself and the processes compare by what they hold
# (the prompt's and the weights' identity, the images each lists, the data's SHA-256)
PER_PROCESS_OPTIONS = ("device", "workers", "use_cache", "model", "pretrained", "ood")


def same_options_on_every_rank(cfg: Any, **extra: Any) -> None:
    """Raise the same UserError in every process when they were given other values of an option
    of the command's dataclass ``cfg`` (or of the ``extra`` flags, ``resume=...``), but for the
    path options and :data:`PER_PROCESS_OPTIONS`: torchruns on two nodes given other command
    lines cut their shares by other batch sizes (an image in no share: a row missing from the
    CSV, exit 0), or met in other collectives (a traceback, or a wait of 30 minutes). Outside
    torchrun: nothing. A collective: every process of the group must call it."""
    fields = [f for f in dataclasses.fields(cfg)
              if flag_of(f) and not f.metadata.get("path") and f.name not in PER_PROCESS_OPTIONS]
    mine = {**{flag_of(f): getattr(cfg, f.name) for f in fields},
            **{"--" + k.replace("_", "-"): v for k, v in extra.items()}}
    values = every_rank(mine)
    for flag in mine:
        seen = [v.get(flag) for v in values]
        if any(s != seen[0] for s in seen[1:]):
            shown = ", ".join(f"{s!r} in process {rank}" for rank, s in enumerate(seen))
            raise UserError(f"{flag}: the {len(values)} processes were given other values ({shown}); give every "
                            "process (every node's torchrun) the same command")


def writes_outputs() -> bool:
    """Whether this process writes a command's outputs: rank 0 of a torch.distributed process
    group, or the one process outside one."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


@contextlib.contextmanager
def writer_lock(out: str | os.PathLike, flag: str = "--out", folder: bool = False) -> Iterator[None]:
    """:func:`~clip_smot.common.locks.output_lock` of ``out``, held while inside by the process
    that writes (:func:`writes_outputs`); under torchrun every process raises its refusal (none
    waits for a rank 0 that has stopped)."""
    with contextlib.ExitStack() as held:
        error, failure = "", None
        if writes_outputs():
            try:
                held.enter_context(output_lock(out, flag, folder))
            except Exception as e:  # (whatever it is, the other ranks hear of it)
                error, failure = str(e) or type(e).__name__, e
        error = every_rank(error)[0]
        if failure is not None:
            raise failure
        if error:
            raise UserError(error)
        yield


def share_work(fn: Callable[[list], Any], items: Sequence, batch_size: int) -> list:
    """``fn`` of this process's :func:`batch_share` of ``items``, with every process's result.

    Outside a torch.distributed process group, ``[fn(items)]``. Inside one, each process runs
    ``fn`` on its share (none on an empty share) and gets every result in rank order, so
    that joining them gives one process's result in the items' order.

    Raises:
        UserError: the first (in rank order, so in the items' order) a process's ``fn``
            raised, on every process: none waits for another that has failed; or processes that
            were given other items (each lists the files itself: a folder that changed meanwhile).
    """
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return [fn(list(items))]
    mine = batch_share(len(items), batch_size, torch.distributed.get_rank(), torch.distributed.get_world_size())
    listed = hashlib.sha256("\n".join(map(str, items)).encode("utf-8", "surrogateescape")).hexdigest()
    try:
        result = (fn(list(items[mine.start:mine.stop])) if len(mine) else None, "", listed)
    except UserError as e:
        result = (None, str(e), listed)
    results = every_rank(result)
    if len({digest for _, _, digest in results}) > 1:
        raise UserError(f"the {len(results)} processes were given other lists of {len(items)} images to share (were "
                        "files added to or removed from a folder while the run went?); run again")
    error = next((e for _, e, _ in results if e), "")
    if error:
        raise UserError(error)
    return [r for r, _, _ in results if r is not None]
