"""Requests checked against the model's schema before anything is scored.

The schema is the pipeline spec's features (numeric, binary, categorical) checked against the
served graph's inputs, plus the entity key (the spec's hashed identifier, optional in a request,
used for sticky routing and stored hashed). Every problem is a 4xx that names the field and the
fix, collected for the whole request (not only the first), never a 500:

* a body over ``max_body_bytes`` → 413; more rows than ``max_rows`` → 413;
* not JSON, ``NaN``/``Infinity`` literals (not JSON) → 400;
* missing or unknown fields, wrong types, non-finite numbers, binary values other than 0/1
  (or false/true) → 422.

``null`` is accepted for a numeric feature (unknown: imputed as in training) and for the entity key
or a dropped identifier (as if absent), nowhere else. A
categorical value the model never saw is served (the one-hot encoder ignores it, as in training)
and counted per field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

MAX_BODY_BYTES = 1_000_000
MAX_ROWS = 1000
MAX_TEXT = 200
FLOAT32_MAX = 3.4e38  # the graph's inputs are float32: larger numbers cannot be represented


class RequestError(ValueError):
    """A request the service refuses, with the HTTP status and what to fix."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.problems = problems or []


@dataclass(frozen=True)
class RequestSchema:
    pipeline: str
    numeric: tuple[str, ...]
    binary: tuple[str, ...]
    categorical: tuple[str, ...]
    entity: str | None  # the hashed identifier a request may carry: the entity key, hashed before use
    dropped: tuple[str, ...] = ()  # identifiers the spec drops: accepted in a request, never used or stored
    task: str = "binary"
    classes: tuple[str, ...] = ()  # multiclass: target.classes, in order
    target_range: tuple[float, float] | None = None  # regression: target.range

    @cached_property  # read several times per request: computed once
    def features(self) -> tuple[str, ...]:
        return self.numeric + self.binary + self.categorical

    @cached_property
    def _feature_set(self) -> frozenset[str]:
        return frozenset(self.features)

    @cached_property
    def _allowed(self) -> frozenset[str]:
        return self._feature_set | ({self.entity} if self.entity else set()) | set(self.dropped)

    @classmethod
    def from_spec(cls, spec) -> RequestSchema:
        # Only a hashed identifier is an entity key: one the spec drops is never stored, not even raw
        # in the prediction log.
        return cls(
            pipeline=spec.name,
            numeric=tuple(spec.features.numeric),
            binary=tuple(spec.features.binary),
            categorical=tuple(spec.features.categorical),
            entity=spec.entity_column,
            dropped=tuple(c for c, action in spec.identifiers.items() if action == "drop"),
            task=spec.task,
            classes=tuple(spec.target.classes or ()),
            target_range=spec.target.range,
        )

    def label(self, value: object) -> float:
        """A feedback label as the log stores it (0/1, the class index, the number), or
        :class:`RequestError` naming what the task expects."""
        if self.task == "multiclass":
            if not isinstance(value, str) or value not in self.classes:
                raise RequestError(
                    422, f"label must be one of the classes {list(self.classes)}, got {value!r}"[:300]
                )
            return self.classes.index(value)
        if self.task == "regression":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise RequestError(
                    422, f"label must be a number (the observed {self.pipeline} target), got {value!r}"[:300]
                )
            if self.target_range is not None and not self.target_range[0] <= value <= self.target_range[1]:
                low, high = self.target_range
                raise RequestError(422, f"label {value!r} is outside the target's range [{low:g}, {high:g}]")
            return float(value)
        if isinstance(value, bool) or value not in (0, 1):
            raise RequestError(422, f"label must be 0 or 1, got {value!r}"[:200])
        return int(value)  # type: ignore[call-overload]

    def label_schema(self) -> dict:
        """The OpenAPI schema of a feedback label for this task."""
        if self.task == "multiclass":
            return {"type": "string", "enum": list(self.classes)}
        if self.task == "regression":
            out: dict[str, Any] = {"type": "number"}
            if self.target_range is not None:
                out |= {"minimum": self.target_range[0], "maximum": self.target_range[1]}
            return out
        return {"type": "integer", "enum": [0, 1]}

    def prediction_schema(self) -> dict:
        """The OpenAPI schema of one answered row for this task."""
        common = {
            "request_id": {"type": "string"},
            "model_version": {"type": "integer"},
            "variant": {"type": "string", "enum": ["champion", "challenger"]},
        }
        if self.task == "multiclass":
            per_task: dict[str, Any] = {
                "class": {"type": "string", "enum": list(self.classes), "description": "the decided class"},
                "probabilities": {
                    "type": "object",
                    "properties": {c: {"type": "number"} for c in self.classes},
                    "description": "every class's probability",
                },
            }
        elif self.task == "regression":
            per_task = {
                "prediction": {"type": "number", "description": "the model's estimate"},
                "decision": {
                    "type": "number",
                    "description": "the estimate shifted to the lowest expected cost of over- and "
                    "under-prediction (equal to prediction without costs in the spec)",
                },
                "interval": {
                    "type": "object",
                    "properties": {
                        "low": {"type": "number"},
                        "high": {"type": "number"},
                        "coverage": {"type": "number"},
                    },
                    "description": "the 90% prediction interval: the estimate plus the 5% and 95% quantiles of "
                    "the version's residuals on its held-out test split",
                },
            }
        else:
            per_task = {
                "probability": {"type": "number"},
                "decision": {"type": "integer", "enum": [0, 1]},
                "threshold": {"type": "number"},
            }
        return {"type": "object", "properties": {"request_id": common["request_id"], **per_task, **common}}

    def check_model(self, inputs: dict[str, str]) -> list[str]:
        """Disagreements between the spec and a served graph (the graph wins: it is what scores)."""
        want = {n: "float" for n in self.numeric + self.binary} | {n: "string" for n in self.categorical}
        return [
            f"{name}: spec says {want.get(name, 'absent')}, model input is {inputs.get(name, 'absent')}"
            for name in sorted(set(want) | set(inputs))
            if want.get(name) != inputs.get(name)
        ]

    def openapi(self, categories: dict[str, frozenset[str]] | None = None) -> dict:
        """An OpenAPI 3.1 document for this pipeline's routes, with the real field names and types."""
        props: dict[str, dict] = {}
        for n in self.numeric:
            props[n] = {
                "type": ["number", "null"],
                "minimum": -FLOAT32_MAX,
                "maximum": FLOAT32_MAX,
                "description": "numeric; null = unknown (imputed)",
            }
        for n in self.binary:
            props[n] = {
                "type": ["integer", "boolean"],
                "enum": [0, 1, False, True],
                "description": "binary: 0 or 1 (false or true)",
            }
        for n in self.categorical:
            known = sorted((categories or {}).get(n, ()))
            props[n] = {
                "type": "string",
                "maxLength": MAX_TEXT,
                "description": "categorical" + (f"; known: {known}" if known else ""),
            }
        row: dict[str, Any] = {
            "type": "object",
            "required": list(self.features),
            "additionalProperties": False,
            "properties": dict(props),
        }
        if self.entity:
            row["properties"][self.entity] = {
                "type": ["string", "integer", "null"],
                "minLength": 1,
                "maxLength": 200,
                "description": "entity key for sticky routing (hashed before use); absent or null: none",
            }
        for name in self.dropped:
            row["properties"][name] = {
                "type": ["string", "integer", "null"],
                "description": "an identifier the pipeline drops: accepted, never used or stored",
            }
        p = self.pipeline
        prediction = self.prediction_schema()
        error = {"type": "object", "properties": {"error": {"type": "string"}, "problems": {"type": "array"}}}
        responses = {
            "400": {
                "description": "the body is not JSON (NaN and Infinity are not JSON)",
                "content": _json(error),
            },
            "401": {"description": "no or unknown API key"},
            "403": {"description": "the key lacks the scope or the pipeline"},
            "413": {"description": "body or batch too large", "content": _json(error)},
            "422": {"description": "fields that do not match the schema", "content": _json(error)},
            "503": {"description": "no model, or the prediction log cannot keep up (Retry-After)"},
        }
        security: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
        return {
            "openapi": "3.1.0",
            "info": {"title": f"Slipway inference: {p}", "version": "1"},
            "components": {
                "schemas": {"Row": row, "Prediction": prediction, "Error": error},
                "securitySchemes": {
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                    "bearer": {"type": "http", "scheme": "bearer"},
                },
            },
            "security": security,
            "paths": {
                f"/v1/{p}/predict": {
                    "post": {
                        "summary": "Score one row ({'inputs': row}) or a batch ({'instances': [row, ...]})",
                        "requestBody": {
                            "required": True,
                            "content": _json(
                                {
                                    "oneOf": [
                                        {
                                            "type": "object",
                                            "required": ["inputs"],
                                            "additionalProperties": False,
                                            "properties": {"inputs": {"$ref": "#/components/schemas/Row"}},
                                        },
                                        {
                                            "type": "object",
                                            "required": ["instances"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "instances": {
                                                    "type": "array",
                                                    "minItems": 1,
                                                    "maxItems": MAX_ROWS,
                                                    "items": {"$ref": "#/components/schemas/Row"},
                                                }
                                            },
                                        },
                                    ]
                                }
                            ),
                        },
                        "responses": {
                            "200": {"description": "scored and logged", "content": _json({"type": "object"})},
                            **responses,
                        },
                    }
                },
                f"/v1/{p}/explain": {
                    "post": {
                        "summary": "Local SHAP contributions per original column for one row ({'inputs': row})",
                        "requestBody": {
                            "required": True,
                            "content": _json(
                                {
                                    "type": "object",
                                    "required": ["inputs"],
                                    "additionalProperties": False,
                                    "properties": {"inputs": {"$ref": "#/components/schemas/Row"}},
                                }
                            ),
                        },
                        "responses": {
                            "200": {"description": "contributions, base value, explainer"},
                            **responses,
                        },
                    }
                },
                f"/v1/{p}/feedback": {
                    "post": {
                        "summary": "Attach ground-truth labels to request ids",
                        "requestBody": {
                            "required": True,
                            "content": _json(
                                {
                                    "type": "object",
                                    "required": ["request_id", "label"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "request_id": {"type": "string", "minLength": 1, "maxLength": 64},
                                        "label": self.label_schema(),
                                    },
                                }
                            ),
                        },
                        "responses": {
                            "200": {"description": "recorded or unchanged"},
                            "404": {"description": "unknown request id"},
                            "409": {"description": "a different label is already recorded"},
                            **responses,
                        },
                    }
                },
            },
        }

    # ------------------------------------------------------------------ checking
    def rows(self, body: object) -> tuple[list[dict], bool]:
        """The rows of a predict body and whether it was a batch; :class:`RequestError` otherwise."""
        if not isinstance(body, dict):
            raise RequestError(
                422, "the body must be a JSON object: {'inputs': {...}} or {'instances': [...]}"
            )
        extra = sorted(set(body) - {"inputs", "instances"})
        if extra or len(body) != 1:
            raise RequestError(
                422,
                "the body must hold exactly one of 'inputs' (one row) or 'instances' (a list of rows)"
                + (f"; unknown keys {extra}" if extra else ""),
            )
        if "inputs" in body:
            return [body["inputs"]], False
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise RequestError(422, "'instances' must be a non-empty list of rows")
        if len(rows) > MAX_ROWS:
            raise RequestError(
                413, f"'instances' holds {len(rows)} rows; send at most {MAX_ROWS} per request"
            )
        return rows, True

    def columns(self, rows: list) -> tuple[dict[str, list], list[str | None], list[str]]:
        """Check every row; return values per feature, each row's entity key (raw) and problems."""
        problems: list[str] = []
        values: dict[str, list] = {n: [] for n in self.features}
        keys: list[str | None] = []
        for i, row in enumerate(rows):
            where = f"instances[{i}]" if len(rows) > 1 else "inputs"
            if not isinstance(row, dict):
                problems.append(f"{where}: must be an object of field: value")
                keys.append(None)
                continue
            present = row.keys()
            missing = [] if present >= self._feature_set else [n for n in self.features if n not in row]
            unknown = [] if present <= self._allowed else sorted(set(row) - self._allowed)
            if missing:
                problems.append(f"{where}: missing fields {missing}")
            if unknown:
                problems.append(
                    f"{where}: unknown fields {unknown[:20]}; the model's fields are {list(self.features)}"
                )
            key = row.get(self.entity) if self.entity else None
            if key is not None and (
                not isinstance(key, str | int) or isinstance(key, bool) or not 0 < len(str(key)) <= 200
            ):
                problems.append(
                    f"{where}.{self.entity}: must be a string of 1 to 200 characters (the entity key)"
                )
                key = None
            keys.append(None if key is None else str(key))
            for n in self.numeric:
                v = row.get(n)
                if v is None:
                    values[n].append(math.nan)
                elif isinstance(v, bool) or not isinstance(v, int | float):
                    problems.append(f"{where}.{n}: must be a number or null, got {type(v).__name__}")
                elif not math.isfinite(float(v)) or abs(float(v)) > FLOAT32_MAX:
                    problems.append(f"{where}.{n}: must be a finite number")
                else:
                    values[n].append(float(v))
            for n in self.binary:
                v = row.get(n)
                if n not in row:
                    continue
                if isinstance(v, bool):
                    values[n].append(float(v))
                elif isinstance(v, int | float) and v in (0, 1):
                    values[n].append(float(v))
                else:
                    problems.append(f"{where}.{n}: must be 0 or 1, got {v!r}"[:200])
            for n in self.categorical:
                v = row.get(n)
                if n not in row:
                    continue
                if not isinstance(v, str):
                    problems.append(f"{where}.{n}: must be a string, got {type(v).__name__}")
                elif len(v) > MAX_TEXT:
                    problems.append(f"{where}.{n}: longer than 200 characters")
                else:
                    values[n].append(v)
            if len(problems) > 50:
                problems.append("… more problems not listed")
                break
        return values, keys, problems

    def arrays(self, values: dict[str, list]) -> dict[str, np.ndarray]:
        """The graph's inputs: one (n, 1) array per feature."""
        out = {}
        # One conversion per type, not per column; each input is a (n, 1) view of its block's row.
        for names, dtype in ((self.numeric + self.binary, np.float32), (self.categorical, object)):
            if names:
                block = np.empty((len(names), len(values[names[0]])), dtype=dtype)
                block[:] = [values[n] for n in names]
                for i, n in enumerate(names):
                    out[n] = block[i].reshape(-1, 1)
        return out


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}
