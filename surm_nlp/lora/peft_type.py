"""Adds ``SURM`` to peft's closed ``PeftType`` enum, which ``register_peft_method`` requires.

peft 0.21 has no public way to add a PEFT type from outside the library; this is the one place
that touches enum internals. It fails loudly (``test_peft_type``) if peft's enum changes shape.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType


def add_peft_type(name: str) -> PeftType:
    """``PeftType[name]``, creating the member if peft does not have it yet."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


SURM_PEFT_TYPE = add_peft_type("SURM")
