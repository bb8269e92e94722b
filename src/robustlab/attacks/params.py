"""Attack hyper-parameters, declared once as class fields (in the manner of a dataclass).

An attack lists its hyper-parameters in its class body, each with its default and its check::

    class PGD(Attack):
        threat = param("linf:0.3")
        steps: int = param(40, integer)
        step_size: float | None = param(None, optional(positive))

and gets one ``__init__`` built from the declarations (:func:`declared_init`): ``threat`` may be
given by position, every other parameter by keyword, and ``inspect.signature(PGD)`` lists every
keyword the class takes (``Registry.build`` and ``robustlab list`` read it). The common parameters
(``threat``, ``norm``, ``loss``, ``targeted``, ``restarts``, ``seed``) are those of the base
class's ``__init__``, which sets them; a subclass redeclares one to change its default (without a
check it keeps the inherited one), or declares it :func:`fixed` when it does not take it.

The generated ``__init__`` calls the base ``__init__`` with the common parameters, then sets the
declared ones class by class, base classes first, each checked in declaration order and followed by
the declaring class's ``_check_params`` hook (checks across parameters, defaults that depend on
others), as a chain of hand-written ``__init__`` methods would. A class that writes its own
``__init__`` keeps it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.validation import check_int, check_positive

REQUIRED = inspect.Parameter.empty

#: ``(value, name) -> value``: checks (and converts) one parameter, raising a RobustlabError that
#: names it
Check = Callable[[Any, str], Any]

#: the common parameters that come before a class's own in its signature; the others come after
LEADING = ("threat", "norm")


@dataclass(frozen=True)
class Param:
    """One declared parameter: its default, its check and whether the class takes it."""

    default: Any = REQUIRED
    check: Check | None = None
    accepted: bool = True

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        """Read on the class: the default, as for a dataclass field (an instance has its own)."""
        if self.default is REQUIRED:
            raise AttributeError("a required parameter has no default")
        return self.default


def param(default: Any = REQUIRED, check: Check | None = None) -> Any:
    """A hyper-parameter with its ``default`` (none: required) and ``check``."""
    return Param(default, check)


def fixed(value: Any) -> Any:
    """A parameter this class does not take (not in its signature): always ``value``."""
    return Param(value, accepted=False)


# ----------------------------------------------------------------------------- checks
def integer(value: Any, name: str) -> int:
    """An integer >= 1."""
    return check_int(value, name)


def positive(value: Any, name: str) -> float:
    """A finite number > 0."""
    return check_positive(value, name)


def nonnegative(value: Any, name: str) -> float:
    """A finite number >= 0."""
    return check_positive(value, name, allow_zero=True)


def fraction(value: Any, name: str) -> float:
    """A number in (0, 1]."""
    if check_positive(value, name) > 1:
        raise RobustlabError(f"{name} must be in (0, 1], got {value!r}.")
    return float(value)


def flag(value: Any, name: str) -> bool:
    return bool(value)


def real(value: Any, name: str) -> float:
    return float(value)


def optional(check: Check) -> Check:
    """``check``, with ``None`` passed through (a default resolved by ``_check_params``)."""

    def maybe(value: Any, name: str) -> Any:
        return None if value is None else check(value, name)

    return maybe


# ----------------------------------------------------------------------------- the generated init
@dataclass(frozen=True)
class _Layout:
    """What :func:`declared_init` needs of one class."""

    signature: inspect.Signature  # with ``self``
    common: dict[str, Any]  # fixed values of the base ``__init__``'s parameters
    groups: list[tuple[type, list[tuple[str, Param]]]]  # own parameters by declaring class


def _declarations(cls: type, stop: type) -> dict[str, tuple[type, Param]]:
    """Name -> (declaring class, parameter) over the classes from ``stop`` (excluded) to ``cls``,
    base classes first; a redeclaration keeps the first position and, without a check, the check
    it overrides."""
    found: dict[str, tuple[type, Param]] = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(stop)]):
        for name, value in vars(klass).items():
            if not isinstance(value, Param):
                continue
            if name in found:
                owner, old = found[name]
                found[name] = (owner, replace(value, check=value.check or old.check))
            else:
                found[name] = (klass, value)
    return found


def _annotation(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            return vars(klass)["__annotations__"][name]
    return inspect.Parameter.empty


def _layout(cls: type, base: type, hidden: tuple[str, ...]) -> _Layout:
    base_params = list(inspect.signature(base.__init__).parameters.values())
    declared = _declarations(cls, base)
    leading, trailing = [], []
    common: dict[str, Any] = {}
    for p in base_params[1:]:  # the common parameters, checked by base.__init__
        default = Param(None, accepted=False) if p.name in hidden else Param(p.default)
        decl = declared.pop(p.name, (base, default))[1]
        if not decl.accepted:
            common[p.name] = decl.default
            continue
        kind = p.POSITIONAL_OR_KEYWORD if p.name == "threat" else p.KEYWORD_ONLY
        (leading if p.name in LEADING else trailing).append(
            p.replace(kind=kind, default=decl.default)
        )
    keyword = inspect.Parameter.KEYWORD_ONLY
    own = [
        inspect.Parameter(name, keyword, default=decl.default, annotation=_annotation(cls, name))
        for name, (_, decl) in declared.items()
        if decl.accepted
    ]
    groups = []
    for klass in reversed(cls.__mro__[: cls.__mro__.index(base)]):
        mine = [(name, decl) for name, (owner, decl) in declared.items() if owner is klass]
        if mine or "_check_params" in vars(klass):
            groups.append((klass, mine))
    signature = inspect.signature(base.__init__).replace(
        parameters=[base_params[0], *leading, *own, *trailing]
    )
    return _Layout(signature, common, groups)


def declared_init(cls: type, base: type, hidden: tuple[str, ...] = ()) -> Callable[..., None]:
    """The ``__init__`` of ``cls`` built from its declared parameters (see the module docstring);
    ``hidden``: parameters of ``base.__init__`` that ``cls`` does not take unless it declares
    them."""
    layout = _layout(cls, base, hidden)
    common_names = list(inspect.signature(base.__init__).parameters)[1:]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            bound = layout.signature.bind(self, *args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{type(self).__name__}() {err}") from None
        bound.apply_defaults()
        values = {**layout.common, **bound.arguments}
        base.__init__(self, values["threat"], **{n: values[n] for n in common_names[1:]})
        for klass, declared in layout.groups:
            for name, decl in declared:
                value = values[name] if decl.accepted else decl.default
                setattr(self, name, decl.check(value, name) if decl.check else value)
            hook = vars(klass).get("_check_params")
            if hook is not None:
                hook(self)

    __init__.__signature__ = layout.signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    __init__.declared = True  # type: ignore[attr-defined]
    return __init__


def declares_params(cls: type) -> bool:
    """Whether the body of ``cls`` declares parameters or a ``_check_params`` hook."""
    body = vars(cls)
    return "_check_params" in body or any(isinstance(v, Param) for v in body.values())
