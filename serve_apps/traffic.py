"""The router's traffic policy: champion/challenger split, shadow scoring and the canary ramp.

A :class:`TrafficPolicy` is an immutable pydantic model. The router receives it through Ray
Serve's ``reconfigure(user_config)`` and swaps its reference in one assignment, so requests
read a whole policy (old or new) without a lock. :meth:`TrafficPolicy.advance` and
:meth:`TrafficPolicy.rollback` return a new policy with the next ``generation``.

Arm assignment (:func:`assign_arm`) is a salted hash split, the deterministic bucketing used
for online experiments (Kohavi, Tang & Xu, "Trustworthy Online Controlled Experiments",
Cambridge UP 2020, ch. 14 "Randomization Unit" and ch. 21 on ramping):

    u(job) = blake2b_64(key = salt, message = job_id) / 2**64  in [0, 1)
    arm(job) = "challenger" if u(job) < challenger_weight else "champion"

* **Sticky**: the arm depends only on ``(salt, job_id, challenger_weight)``, so every scoring
  of a job (re-offers, reassignments, retries, any replica) is served by the same model and
  the job's candidates are ranked consistently.
* **Monotone ramp**: raising the weight from w to w' moves exactly the jobs with
  w <= u < w' to the challenger and no job back, so advancing a canary never flips a job
  that has already been served by the challenger.
* **Reshuffled per experiment**: a different salt gives an independent u, so a new
  experiment does not put the same jobs in the treatment group again. By default the salt is
  derived from the champion and challenger versions, so a new pairing reshuffles by itself.

blake2b is a keyed cryptographic hash in the standard library: its 64-bit prefix is uniform
and independent across salts, which Python's built-in ``hash`` (randomised per process) and
CRC-style hashes are not.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

Arm = Literal["champion", "challenger"]

_TWO_POW_64 = 1 << 64


class TrafficPolicyError(ValueError):
    """A traffic policy change that cannot be made (e.g. advancing past the last canary step)."""


class TrafficPolicy(BaseModel):
    """Which dispatch versions serve which jobs. Versions are ``dispatch`` family version ids."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    champion: str = Field(min_length=1)
    challenger: str | None = Field(default=None, min_length=1)
    #: Fraction of jobs served by the challenger: the live split.
    challenger_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Score every champion-served job with the challenger too, off the response path.
    shadow: bool = False
    #: Canary ramp, strictly increasing weights in (0, 1], e.g. ``[0.05, 0.25, 0.5]``.
    canary_steps: tuple[float, ...] = ()
    #: Index into ``canary_steps`` of the live step; ``None`` before the ramp starts or after
    #: a rollback. When set, ``challenger_weight`` equals that step's weight.
    canary_step: int | None = Field(default=None, ge=0)
    #: Hash salt; ``None`` derives it from the versions, so a new experiment reshuffles.
    salt: str | None = Field(default=None, min_length=1)
    #: Increases with every change, so replicas and logs can tell which policy served a job.
    generation: int = Field(default=0, ge=0)

    _hasher: hashlib.blake2b = PrivateAttr()
    _challenger_below: int = PrivateAttr()

    @field_validator("canary_steps")
    @classmethod
    def _steps_increase(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        for step in steps:
            if not (math.isfinite(step) and 0.0 < step <= 1.0):
                raise ValueError(f"canary step {step} is outside (0, 1]")
        if any(later <= earlier for earlier, later in itertools.pairwise(steps)):
            raise ValueError(f"canary_steps must strictly increase, got {list(steps)}")
        return steps

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.challenger is None:
            if self.challenger_weight > 0.0:
                raise ValueError(
                    f"challenger_weight is {self.challenger_weight} but there is no challenger; "
                    "set challenger to a dispatch version or the weight to 0"
                )
            if self.shadow:
                raise ValueError("shadow needs a challenger to score with; set challenger or shadow: false")
            if self.canary_step is not None:
                raise ValueError("canary_step is set but there is no challenger to ramp")
        elif self.challenger == self.champion:
            raise ValueError(f"challenger and champion are both {self.champion}; a version cannot challenge itself")
        if self.canary_step is not None:
            if self.canary_step >= len(self.canary_steps):
                raise ValueError(
                    f"canary_step {self.canary_step} is past the last of {len(self.canary_steps)} canary_steps"
                )
            step_weight = self.canary_steps[self.canary_step]
            if self.challenger_weight != step_weight:
                raise ValueError(
                    f"challenger_weight {self.challenger_weight} differs from canary step "
                    f"{self.canary_step} ({step_weight}); set the weight to the step's or canary_step to null"
                )
        return self

    def model_post_init(self, context: object, /) -> None:
        # Done once per policy so that assign_arm only copies a keyed hash state per job.
        salt = self.assignment_salt.encode()
        self._hasher = hashlib.blake2b(key=hashlib.blake2b(salt, digest_size=32).digest(), digest_size=8)
        # u < w  <=>  64-bit bucket < floor(w * 2**64): exact, since w * 2**64 only shifts the exponent.
        self._challenger_below = int(self.challenger_weight * _TWO_POW_64)

    @property
    def assignment_salt(self) -> str:
        return self.salt if self.salt is not None else f"{self.champion}|{self.challenger or ''}"

    def serving_version(self, arm: Arm) -> str:
        """The dispatch version that answers a job assigned to ``arm``."""
        if arm == "challenger":
            if self.challenger is None:
                raise TrafficPolicyError("no challenger is configured; assign_arm never returns it")
            return self.challenger
        return self.champion

    def shadows(self, arm: Arm) -> bool:
        """Whether the challenger also scores this job off the response path (champion jobs only)."""
        return self.shadow and arm == "champion"

    def advance(self) -> TrafficPolicy:
        """The next canary step: the smallest step weight above the live weight, so never a step back."""
        if self.challenger is None:
            raise TrafficPolicyError("there is no challenger to ramp; set challenger first")
        if not self.canary_steps:
            raise TrafficPolicyError("no canary_steps are configured; set e.g. [0.05, 0.25, 0.5]")
        following = [i for i, weight in enumerate(self.canary_steps) if weight > self.challenger_weight]
        if not following:
            raise TrafficPolicyError(
                f"the canary is at its last step ({self.challenger_weight}); promote the challenger "
                "with `dispatchml models alias dispatch champion VERSION` instead"
            )
        step = following[0]
        return self._changed(canary_step=step, challenger_weight=self.canary_steps[step])

    def rollback(self) -> TrafficPolicy:
        """Stop the canary: every job back to the champion (shadow scoring, if on, continues).

        A rollback drops to zero rather than one step down, because a challenger that misbehaves
        at one step should not keep serving a smaller share of real dispatches.
        """
        return self._changed(canary_step=None, challenger_weight=0.0)

    def _changed(self, **update: object) -> TrafficPolicy:
        # Through validation again (model_copy would skip it) so a new policy is always valid.
        return TrafficPolicy.model_validate(
            self.model_dump() | update | {"generation": self.generation + 1}
        )


def assign_arm(job_id: str, policy: TrafficPolicy) -> Arm:
    """The arm serving ``job_id``: sticky, monotone in the weight, salted (see module docstring)."""
    hasher = policy._hasher.copy()
    hasher.update(job_id.encode())
    bucket = int.from_bytes(hasher.digest(), "big")
    return "challenger" if bucket < policy._challenger_below else "champion"
