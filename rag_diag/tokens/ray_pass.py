"""Ray engine, part one: the Ray session, its errors, and the encoder pass run by Ray Data actors.

- :func:`ray_session` uses a Ray already initialised in this process, connects to ``--ray-address``
  (``host:port`` probed first, ``auto``, ``ray://…``) or starts a local instance, and shuts down only what
  it started; :func:`ray_failure` turns Ray's wrapped actor errors into one line.
- :func:`ray_hidden_batches` is the encoder pass of :func:`rag_diag.tokens.extract.encode_texts` on Ray:
  ``ray.data.from_items`` over (row, text) records, ordered longest first as the local pass batches them,
  then ``map_batches`` with an actor pool of :class:`_TokenActor` (one encoder per actor, ``num_gpus`` where
  asked; one forward pass per batch). Each actor returns, per text, its row index, its token count and its
  hidden states (layers × tokens × d, float32, flattened: a ragged column). The driver writes them into the
  memory-mapped token store at the row's offset, so the store has the local engine's layout whatever order
  Ray returns blocks in. Batch composition changes only the zero padding of the encoder's input, masked
  out of attention: float32 rounding of the forward pass (≤ 3e-7 relative, measured on MiniLM).

The rank-r summaries of kNN collapse on Ray are :mod:`rag_diag.collapse.ray_engine`. Ray is an optional extra
(``pip install 'ray[data]==2.60.0'``), imported only when used.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag_diag.errors import RagDiagError, first_line
from rag_diag.models.protocol import Encoder

MISSING_RAY = "the Ray engine needs the 'ray' package: pip install 'ray[data]==2.60.0'"
CONNECT_TIMEOUT_S = 5.0
MAX_BLOCKS = 1024  # beyond this, blocks grow instead (tiny blocks cost scheduling overhead)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class RayOptions:
    """Where and how the Ray encoder actors run.

    ``address``: an existing cluster (``host:port``, ``auto``, ``ray://…``); None starts a local instance with
    ``num_cpus`` CPUs. ``actors``: a fixed pool size (None: Ray scales it). ``num_gpus_per_actor`` > 0 loads a
    registry model on CUDA in each actor.
    """

    address: str | None = None
    num_cpus: int | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is part of the extra)
    except ImportError:
        raise RagDiagError(MISSING_RAY) from None
    return ray


def _probe(address: str) -> None:
    """Fail fast on a plain host:port nobody listens on (``ray.init`` would retry for minutes)."""
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise RagDiagError(f"cannot connect to the Ray cluster at {address}: {first_line(exc)}") from None


@contextmanager
def ray_session(ray: Any, address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Use a running Ray, else connect to ``address`` / start a local instance; shut down only what we started."""
    if ray.is_initialized():
        yield
        return
    try:
        if address:
            _probe(address)
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except RagDiagError:
        raise
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError … here
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RagDiagError(f"cannot start {where}: {first_line(exc)}{auth_hint(exc)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def auth_hint(exc: BaseException) -> str:
    """A hint when Ray's refusal was its token authentication, which the first line of its error leaves out (the
    cause sits further down the message or in a chained exception)."""
    texts, current = [], exc
    for _ in range(8):
        texts.append(f"{type(current).__name__} {current}")
        following = current.__cause__ or current.__context__
        if following is None:
            break
        current = following
    if any("auth" in text.lower() for text in texts):
        return " (the cluster authenticates: set RAY_AUTH_MODE=token and its token, as the README says)"
    return ""


def ray_failure(exc: BaseException) -> RagDiagError:
    """One line for a failed Ray run: the actor's own error, found in Ray's wrapped tracebacks.

    Ray passes the actor-side exception to the driver as traceback text only (inside
    ``RayTaskError`` / ``ActorDiedError``), so the first ``Type: message`` line that is not Ray's own
    is quoted; a RagDiagError raised in an actor keeps its message as it is.
    """
    texts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(texts) < 16:
        if isinstance(current, RagDiagError):
            return RagDiagError(str(current))
        texts.append(_ANSI.sub("", str(current)))
        current = getattr(current, "cause", None) or current.__cause__
    raised = [m for text in texts for m in _RAISED.finditer(text) if not m.group(1).startswith("ray.")]
    for match in raised:
        if match.group(1).endswith("RagDiagError"):
            return RagDiagError(match.group(2))
    if raised:
        return RagDiagError(f"the Ray engine failed: {raised[0].group(1).rpartition('.')[2]}: {raised[0].group(2)}")
    return RagDiagError(f"the Ray engine failed: {first_line(exc)}")


def actor_env() -> dict[str, str]:
    """Environment of the encoder actors: offline Hugging Face (unless RAG_DIAG_ONLINE=1) and this cache."""
    from rag_diag.models.registry import cache_root

    online = os.environ.get("RAG_DIAG_ONLINE") == "1"
    env = {"HF_HUB_OFFLINE": "0" if online else "1", "TRANSFORMERS_OFFLINE": "0" if online else "1",
           "RAG_DIAG_CACHE": str(cache_root())}
    if online:
        env["RAG_DIAG_ONLINE"] = "1"
    return env




class _TokenActor:
    """Ray Data callable class: one encoder per actor; each Ray batch in the local pass's forward passes (sorted
    longest first, :func:`rag_diag.tokens.estimate.batch_slices`), states per text."""

    def __init__(self, model: str | Encoder, layers: list[int], max_seq_length: int | None, device: str) -> None:
        if isinstance(model, str):
            from rag_diag.models.loading import load_encoder

            self.encoder: Encoder = load_encoder(model, device, max_seq_length)
        else:
            self.encoder = model
        self.layers = layers

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rag_diag.tokens.estimate import batch_slices

        input_ids = self.encoder.tokenize([str(t) for t in batch["text"]]).input_ids
        order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))  # stable: the driver's order
        flat = np.empty(len(input_ids), dtype=object)
        # the local pass's forward passes (at most BATCH_TOKENS padded tokens each), not one pass per Ray batch
        parts = batch_slices([len(input_ids[i]) for i in order], len(order))
        for part in parts:
            texts = order[part]
            states = self.encoder.hidden_states([input_ids[i] for i in texts], self.layers)  # (layers, texts, w, d)
            for position, i in enumerate(texts):
                flat[i] = np.ascontiguousarray(states[:, position, : len(input_ids[i])], dtype=np.float32).reshape(-1)
        passes = np.zeros(len(input_ids), dtype=np.int64)
        passes[:1] = len(parts)  # the call's forward passes, on its first row: a column sums them
        return {"row": np.asarray(batch["row"], dtype=np.int64),
                "n": np.array([len(ids) for ids in input_ids], dtype=np.int64), "states": flat, "passes": passes}


@contextmanager
def ray_pipeline(options: RayOptions, show_progress: bool = False) -> Iterator[Any]:
    """A Ray session for one pipeline (yields the ``ray`` module): progress bars as asked, failures as one line."""
    ray = import_ray()
    with ray_session(ray, options.address, options.num_cpus):
        context = ray.data.DataContext.get_current()
        progress_before, context.enable_progress_bars = context.enable_progress_bars, show_progress
        try:
            yield ray
        except RagDiagError:
            raise
        except Exception as exc:  # RayTaskError, ActorDiedError, UserCodeException, …
            raise ray_failure(exc) from None
        finally:
            context.enable_progress_bars = progress_before


def actor_map(ray: Any, records: list[dict[str, Any]], actor: type, constructor: dict[str, Any], batch_size: int,
              options: RayOptions) -> Any:
    """``from_items(records)`` (about one block per batch) mapped by a pool of ``actor`` (Ray Data dataset)."""
    blocks = max(1, min(-(-len(records) // batch_size), MAX_BLOCKS))
    pool = ray.data.ActorPoolStrategy(size=options.actors) if options.actors else ray.data.ActorPoolStrategy()
    return ray.data.from_items(records, override_num_blocks=blocks).map_batches(
        actor, batch_size=batch_size, batch_format="numpy", compute=pool, fn_constructor_kwargs=constructor,
        num_cpus=options.cpus_per_actor, num_gpus=options.num_gpus_per_actor,
        runtime_env={"env_vars": actor_env()},
    )


def ray_hidden_batches(
    texts: Sequence[str],
    order: np.ndarray,
    *,
    model: str | Encoder,
    layers: list[int],
    dim: int,
    batch_size: int,
    max_seq_length: int | None,
    options: RayOptions,
) -> Iterator[tuple[np.ndarray, list[np.ndarray], int]]:
    """Per Ray batch: the row indices, each text's hidden states (layers, n_i, d), in the order Ray returns, and the
    forward passes the actors ran for it.

    ``order`` is the order the texts are fed in (longest first keeps padding low); every row is yielded once.
    """
    if not isinstance(model, str):
        import pickle

        try:
            pickle.dumps(model)
        except Exception:  # a loaded transformer holds unpicklable state
            raise RagDiagError("the Ray engine loads the model in each actor: give a registry name or a model "
                               "folder, not a loaded model") from None
    device = "cuda" if options.num_gpus_per_actor > 0 else "cpu"
    records = [{"row": int(row), "text": texts[row]} for row in order]
    constructor = {"model": model, "layers": layers, "max_seq_length": max_seq_length, "device": device}
    with ray_pipeline(options) as ray:
        dataset = actor_map(ray, records, _TokenActor, constructor, batch_size, options)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = np.asarray(batch["row"], dtype=np.int64)
            states = [np.asarray(s, dtype=np.float32).reshape(len(layers), int(n), dim)
                      for s, n in zip(batch["states"], batch["n"], strict=True)]
            yield rows, states, int(np.asarray(batch["passes"]).sum())
