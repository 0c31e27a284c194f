"""Errors a user can act on. The CLI prints them without a traceback."""


class RecbenchError(Exception):
    """Base class: the message says what went wrong and what to do."""


class DataNotFoundError(RecbenchError):
    pass


class MalformedDataError(RecbenchError):
    pass


class ConfigError(RecbenchError):
    pass


class TrainingDivergedError(RecbenchError):
    pass


def recbench_cause(exc: BaseException | None) -> RecbenchError | None:
    """The recbench error ``exc`` is or was raised from, if any: Hydra's ``instantiate`` wraps
    an error a constructor raises (a task's or a model's refusal of its settings)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RecbenchError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None
