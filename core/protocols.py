"""Types for plugin authors: what each kind of contribution looks like, for an IDE and a type checker.

A plugin needs none of this to work (the registry checks the attributes it gets, ``core/hookspecs.py``
says what they mean); these ``typing.Protocol`` classes let an editor complete and check them::

    from typing import TYPE_CHECKING

    if TYPE_CHECKING:
        from tunelab.core.protocols import Sampler

    class Cold:
        name = "cold"
        description = "Sampling at a low temperature."
        params = []

        def generation_kwargs(self) -> dict:
            return {"do_sample": True, "temperature": 0.3}

    COLD: "Sampler" = Cold()  # the checker says if an attribute is missing or mistyped

They are ``runtime_checkable``: ``isinstance(obj, Sampler)`` says whether ``obj`` has the attributes
(not their types). Nothing here imports torch, transformers or datasets.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol, TypedDict, runtime_checkable


class Turn(TypedDict, total=False):
    """One turn of a canonical conversation (``role`` and ``content`` required)."""

    role: str  # system | user | assistant | tool
    content: str
    train: bool  # assistant turns: False shows it as context, untrained
    tool_calls: str  # assistant turns: a JSON string of [{"name", "arguments"}]


class Segment(TypedDict):
    """One piece of a ``segments`` record: raw text, trained when ``label`` is true."""

    text: str
    label: bool


class Event(TypedDict, total=False):
    """What ``iter_records`` yields per row: ``row`` and one of ``record``, ``dropped`` or ``error``."""

    row: int
    record: dict  # {"messages": [Turn]} | {"text": str} | {"segments": [Segment]}
    warnings: list[str]
    dropped: str  # why the row is read but not trained on
    error: dict  # {"field": str | None, "message": str}


@runtime_checkable
class DataFormat(Protocol):
    """``register_data_formats``: reads a file into canonical records."""

    name: str
    description: str
    extensions: list[str]
    params: list[dict]

    def sniff(self, path: str, head: str) -> bool: ...

    def load(self, path: str, **params: Any) -> Any:  # a datasets.Dataset of canonical records
        ...


@runtime_checkable
class StreamingDataFormat(DataFormat, Protocol):
    """A :class:`DataFormat` that also streams its rows (``data check`` reads big files in bounded memory)."""

    def iter_records(self, path: str, **params: Any) -> Iterator[Event]: ...


@runtime_checkable
class Sampler(Protocol):
    """``register_samplers``: how the next token is picked."""

    name: str
    description: str
    params: list[dict]

    def generation_kwargs(self, **params: Any) -> dict: ...


@runtime_checkable
class SamplerWithProcessors(Sampler, Protocol):
    """A :class:`Sampler` that adds its own ``transformers.LogitsProcessor`` objects."""

    def logits_processors(self, **params: Any) -> Iterable[Any]: ...


@runtime_checkable
class Evaluator(Protocol):
    """``register_evaluators``: a score of a model's answers."""

    name: str
    description: str
    params: list[dict]
    higher_is_better: bool

    def evaluate(self, samples: list[dict], context: dict, **params: Any) -> dict: ...


@runtime_checkable
class Backend(Protocol):
    """``register_backends``: a place where the work runs."""

    name: str
    description: str
    params: list[dict]

    def create(self, settings: dict) -> Any:  # a tunelab.core.engine.Engine
        ...
