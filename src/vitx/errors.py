"""The one exception type vitx raises for problems the caller can fix."""


class VitxError(ValueError):
    """Bad input or an unsupported combination, with a one-line message naming the problem."""


class StaleModuleError(VitxError):
    """A trained module (an explainer, a predictor) refuses a model whose weights differ from those it was
    trained to explain."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__
