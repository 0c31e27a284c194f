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
