"""Errors that end a run with a protocol error code and an exit status."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75

INVALID_DATASET = "invalid_dataset"
INVALID_MODEL = "invalid_model"
# A Hugging Face id the machine cannot download: the Hub is not reachable from it.
MODEL_UNAVAILABLE = "model_unavailable"
INVALID_HYPERPARAMETERS = "invalid_hyperparameters"
OUT_OF_MEMORY = "out_of_memory"
PREEMPTED = "preempted"
INTERNAL = "internal"


class TrainerError(Exception):
    """An error with a protocol code; ``exit_code`` is the process exit status it maps to."""

    def __init__(self, code, message, exit_code=EXIT_FAILED):
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code


class BadInput(TrainerError):
    """Bad input from the caller: exit 2 and no output."""

    def __init__(self, code, message):
        super().__init__(code, message, EXIT_BAD_INPUT)


class Preempted(TrainerError):
    """SIGTERM was received; a checkpoint was written when there was anything to save."""

    def __init__(self, message):
        super().__init__(PREEMPTED, message, EXIT_PREEMPTED)
