"""The ``--faults`` spec (parse_faults -> FaultConfig) and the seeded injector that applies it."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, fields

__all__ = ["Decision", "FaultConfig", "FaultInjector", "parse_faults"]

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)(ms|s)$")
_NUMBER_RE = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)$")
_BURST_RE = re.compile(r"^(\d+)(?:@(\d+))?$")
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@dataclass(frozen=True, kw_only=True)
class FaultConfig:
    """Parsed fault spec. Fractions are per API request; durations are seconds."""

    error_5xx: float = 0.0
    error_409: float = 0.0
    reset: float = 0.0
    lost: float = 0.0
    latency: tuple[float, float] = (0.0, 0.0)
    retry_after: float | None = None
    totalcount: str | None = None
    escape: bool = False
    throttle_burst: int = 0
    throttle_at: int | None = None
    seed: int | None = None

    @property
    def spec(self) -> str:
        """The canonical spec string; ``parse_faults(cfg.spec) == cfg``."""
        default = FaultConfig()
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == getattr(default, f.name) or f.name == "throttle_at":
                continue
            if f.name == "latency":
                low, high = (_fmt_seconds(v) for v in value)
                parts.append(f"latency={low}" if low == high else f"latency={low}-{high}")
            elif f.name == "throttle_burst":
                at = "" if self.throttle_at is None else f"@{self.throttle_at}"
                parts.append(f"throttle_burst={value}{at}")
            elif f.name == "escape":
                parts.append("escape=1")
            else:
                text = f"{value:g}" if isinstance(value, float) else value
                parts.append(f"{_KEY_OF_FIELD[f.name]}={text}")
        return ",".join(parts)


_FIELD_OF_KEY = {
    "5xx": "error_5xx",
    "409": "error_409",
    "reset": "reset",
    "lost": "lost",
    "latency": "latency",
    "retry_after": "retry_after",
    "totalcount": "totalcount",
    "escape": "escape",
    "throttle_burst": "throttle_burst",
    "seed": "seed",
}
_KEY_OF_FIELD = {v: k for k, v in _FIELD_OF_KEY.items()}


def _fmt_seconds(value: float) -> str:
    return f"{round(value * 1000, 3):g}ms"


def _duration(text: str) -> float:
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"duration {text!r} must be a number followed by ms or s")
    return float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)


def _fraction(key: str, text: str) -> float:
    if not _NUMBER_RE.match(text) or not 0.0 <= float(text) <= 1.0:
        raise ValueError(f"{key}={text!r}: expected a fraction between 0 and 1")
    return float(text)


def parse_faults(spec: str) -> FaultConfig:
    """Parse ``key=value[,key=value...]``; see the package docstring for the keys."""
    values: dict[str, object] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        key, sep, text = (s.strip() for s in item.partition("="))
        if not sep or key not in _FIELD_OF_KEY:
            raise ValueError(f"unknown fault {item!r}; known: {', '.join(_FIELD_OF_KEY)}")
        if _FIELD_OF_KEY[key] in values:
            raise ValueError(f"fault {key!r} given twice")
        text = text.lower()
        if key in ("5xx", "409", "reset", "lost"):
            values[_FIELD_OF_KEY[key]] = _fraction(key, text)
        elif key == "latency":
            low, _, high = text.partition("-")
            bounds = (_duration(low), _duration(high) if high else _duration(low))
            if bounds[0] > bounds[1]:
                raise ValueError(f"latency range {text!r} is reversed")
            values["latency"] = bounds
        elif key == "retry_after":
            seconds = text.removesuffix("s")
            if not _NUMBER_RE.match(seconds):
                raise ValueError(f"retry_after={text!r}: expected seconds, e.g. 13 or 0.5")
            values["retry_after"] = float(seconds)
        elif key == "totalcount":
            if not (text.isdigit() or text == "omit"):
                raise ValueError(f"totalcount={text!r}: expected an integer or 'omit'")
            values["totalcount"] = text
        elif key == "escape":
            if text not in _BOOLS:
                raise ValueError(f"escape={text!r}: expected 0 or 1")
            values["escape"] = _BOOLS[text]
        elif key == "throttle_burst":
            match = _BURST_RE.match(text)
            if not match:
                raise ValueError(f"throttle_burst={text!r}: expected N or N@K")
            values["throttle_burst"] = int(match.group(1))
            if match.group(2) is not None:
                if int(match.group(2)) < 1:
                    raise ValueError("throttle_burst=N@K needs K >= 1")
                values["throttle_at"] = int(match.group(2))
        else:
            if not text.lstrip("-").isdigit():
                raise ValueError(f"seed={text!r}: expected an integer")
            values["seed"] = int(text)
    config = FaultConfig(**values)  # type: ignore[arg-type]
    if config.reset + config.error_5xx + config.error_409 > 1.0:
        raise ValueError("reset + 5xx + 409 must not exceed 1")
    return config


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one admitted API request."""

    latency: float
    outcome: str | int | None  # "reset", a status to answer instead (500/502/503/409), or None
    lose: bool  # for a write: apply it, then drop the answer


class FaultInjector:
    """Seeded decisions for API requests.

    Each admitted request draws the same four random values whatever the spec and the
    outcome, so a seed and a request order always replay the same faults.
    """

    def __init__(self, config: FaultConfig, default_seed: int) -> None:
        self.config = config
        self._rng = random.Random(config.seed if config.seed is not None else default_seed)
        self._seen = 0
        burst_at = config.throttle_at
        if burst_at is None:
            burst_at = self._rng.randint(1, 10)
        self._burst = range(burst_at, burst_at + config.throttle_burst)

    def in_throttle_burst(self) -> bool:
        """Count one API request; True while it falls inside the throttle burst."""
        self._seen += 1
        return self._seen in self._burst

    def decide(self, is_write: bool) -> Decision:
        cfg, rng = self.config, self._rng
        delay, draw, pick, lose = rng.random(), rng.random(), rng.random(), rng.random()
        low, high = cfg.latency
        outcome: str | int | None = None
        if draw < cfg.reset:
            outcome = "reset"
        elif draw < cfg.reset + cfg.error_5xx:
            outcome = (500, 502, 503)[int(pick * 3)]
        elif draw < cfg.reset + cfg.error_5xx + cfg.error_409 and is_write:
            outcome = 409  # a concurrent-change conflict only exists for writes
        return Decision(low + (high - low) * delay, outcome, is_write and lose < cfg.lost)
