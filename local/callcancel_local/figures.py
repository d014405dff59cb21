"""`make bench` figures: each a ratio against its baseline from the same run, and one line a script can read.

    BENCH name=batch_idempotency value=0.41 baseline=0.3 ratio=1.37 target=<=1.2 status=missed

`ratio` is always value / baseline. `target` bounds the ratio, or the value itself when the line says
`target_on=value` (the purge's requests per second, a peak RSS in MiB). `status` is `met`, `missed`, or `info` for
a figure reported without a target.
"""

import operator
from dataclasses import dataclass, field
from typing import Literal

_COMPARE = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    baseline: float
    target: str = ""  # "<=1.4", ">=8", or "" for none
    unit: str = "s"
    target_on: Literal["ratio", "value"] = "ratio"
    # False for a figure that is shown against its target but does not decide `make bench`'s exit status.
    gating: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline

    @property
    def status(self) -> str:
        if not self.target:
            return "info"
        compare, bound = _COMPARE[self.target[:2]], float(self.target[2:])
        measured = round(self.ratio, 2) if self.target_on == "ratio" else self.value
        return "met" if compare(measured, bound) else "missed"

    @property
    def failed(self) -> bool:
        return self.gating and self.status == "missed"

    def line(self) -> str:
        fields = {
            "name": self.name,
            "value": f"{self.value:.4g}",
            "baseline": f"{self.baseline:.4g}",
            "ratio": f"{self.ratio:.2f}",
            "target": self.target or "-",
            "unit": self.unit,
            "status": self.status,
            **({"target_on": "value"} if self.target_on == "value" else {}),
            **self.extra,
        }
        return "BENCH " + " ".join(f"{key}={value}" for key, value in fields.items())
