"""`make bench` figures: each a ratio against its baseline from the same run, and one line a script can read.

    BENCH name=batch_idempotency value=0.41 baseline=0.3 ratio=1.37 target=<=1.2 status=missed

`ratio` is always value / baseline, and `target` bounds the ratio. `status` is `met`, `missed`, or `info` for a
figure reported without a target.
"""

import operator
from dataclasses import dataclass, field

_COMPARE = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    baseline: float
    target: str = ""  # on the ratio: "<=1.4", ">=8", or "" for none
    unit: str = "s"
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
        return "met" if compare(round(self.ratio, 2), bound) else "missed"

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
            **self.extra,
        }
        return "BENCH " + " ".join(f"{key}={value}" for key, value in fields.items())
