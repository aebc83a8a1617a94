"""Parameter bounds of img2img's InputParams and the field helpers of pipelines/_base.py: enforced on
the server (an error naming the field, never a silent clamp), and described in the JSON schema with
the widget hints that Real-Time-Latent-Consistency-Model's page reads."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import ValidationError

from pipelines import _base as base
from pipelines.img2img import Info, InputParams

WIDGET_FIELDS = {"range", "seed", "textarea", "checkbox", "select"}


def error_fields(error: ValidationError) -> set[str]:
    return {str(e["loc"][0]) for e in error.errors()}


def refused(**values) -> ValidationError:
    with pytest.raises(ValidationError) as error:
        InputParams(**values)
    return error.value


# --- defaults -----------------------------------------------------------------------------------


def test_defaults_pass_their_own_bounds():
    params = InputParams()
    assert InputParams.model_validate(params.model_dump()) == params


def test_a_client_message_round_trips():
    # What a page sends after next_frame: the JSON object of every field.
    message = json.dumps({**InputParams().model_dump(), "prompt": "a cat", "steps": 2, "width": 256})
    params = InputParams.model_validate_json(message)
    assert (params.prompt, params.steps, params.width) == ("a cat", 2, 256)


# --- bounds: refused, naming the field, never clamped ----------------------------------------------


@pytest.mark.parametrize(
    "field, bad",
    [
        ("steps", 0),
        ("steps", 16),
        ("steps", 100000),
        ("strength", 0.0),
        ("strength", 0.09),
        ("strength", 1.01),
        ("guidance_scale", -0.01),
        ("guidance_scale", 2.01),
        ("guidance_scale", 20.0),
        ("guidance_scale", float("nan")),
        ("strength", float("inf")),
        ("seed", -1),
        ("seed", 2**32),
        ("width", 248),
        ("width", 1032),
        ("width", 65536),
        ("height", 0),
        ("height", 1032),
    ],
)
def test_out_of_range_is_refused_naming_the_field(field, bad):
    error = refused(**{field: bad})
    assert error_fields(error) == {field}
    assert field in str(error)


@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize("value", [260, 257, 511, 1020])
def test_sizes_must_be_multiples_of_8(field, value):
    assert error_fields(refused(**{field: value})) == {field}


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompt_over_the_cap_is_refused(field):
    assert len(getattr(InputParams(**{field: "x" * base.MAX_PROMPT_CHARS}), field)) == base.MAX_PROMPT_CHARS
    assert error_fields(refused(**{field: "x" * (base.MAX_PROMPT_CHARS + 1)})) == {field}
    assert error_fields(refused(**{field: "x" * 1_000_000})) == {field}  # a 1 MB prompt, which Real-Time-Latent-Consistency-Model accepts


def test_unknown_key_is_refused():
    error = refused(promt="a cat")
    assert error_fields(error) == {"promt"}
    assert error.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    "field, bad",
    [("steps", "many"), ("steps", 2.5), ("steps", [4]), ("seed", 1.5), ("seed", "lucky"), ("prompt", 123),
     ("prompt", ["a", "cat"]), ("strength", "high"), ("guidance_scale", {}), ("width", None), ("negative_prompt", None)],
)
def test_wrong_type_is_refused(field, bad):
    assert error_fields(refused(**{field: bad})) == {field}


@pytest.mark.parametrize("field", ["steps", "seed"])
def test_booleans_are_not_numbers(field):
    assert error_fields(refused(**{field: True})) == {field}


def test_several_bad_fields_are_all_named():
    assert error_fields(refused(steps=0, strength=5, width=7)) == {"steps", "strength", "width"}


# --- the JSON schema the page reads ----------------------------------------------------------------


def test_schema_carries_the_widget_hints_pages_read():
    schema = InputParams.model_json_schema()
    properties = schema["properties"]
    assert set(properties) == set(InputParams.model_fields)
    for name, prop in properties.items():
        assert prop["id"] == name, name
        assert prop["field"] in WIDGET_FIELDS, name
        assert isinstance(prop["hide"], bool), name
        assert "default" in prop and "title" in prop, name
        if prop["field"] in ("range", "seed"):
            # The hints are the enforced bounds: the page can never offer a value the server refuses.
            assert prop["min"] == prop["minimum"], name
            assert prop["max"] == prop["maximum"], name
            assert prop["step"] > 0, name
            assert prop["min"] <= prop["default"] <= prop["max"], name
        if prop["field"] == "textarea":
            assert prop["maxLength"] == base.MAX_PROMPT_CHARS, name
    for size in ("width", "height"):
        assert properties[size]["step"] == 8 and properties[size]["multipleOf"] == 8
    assert properties["prompt"]["field"] == "textarea" and properties["prompt"]["hide"] is False
    assert properties["seed"]["field"] == "seed"
    assert properties["strength"]["hide"] is False  # the main control stays visible
    assert schema.get("additionalProperties") is False
    json.dumps(schema)  # sent to the page as JSON


def test_schema_hint_agrees_with_enforcement_for_every_numeric_field():
    # Walk each numeric field's min/max from the schema: the bound passes, one step beyond is refused.
    for name, prop in InputParams.model_json_schema()["properties"].items():
        if prop["field"] not in ("range", "seed"):
            continue
        InputParams(**{name: prop["min"]})
        InputParams(**{name: prop["max"]})
        assert error_fields(refused(**{name: prop["min"] - prop["step"]})) == {name}
        assert error_fields(refused(**{name: prop["max"] + prop["step"]})) == {name}


def test_info_schema_says_image_input():
    schema = Info.model_json_schema()
    assert schema["properties"]["input_mode"]["default"] == "image"
    info = Info()
    assert info.input_mode == "image" and info.name == "img2img" and info.title
    with pytest.raises(ValidationError):
        Info(input_mode="video")


# --- the helpers other pipelines build on -------------------------------------------------------------


class Demo(base.ParamsModel):
    mode: Literal["fast", "slow"] = base.select_field("fast", ["fast", "slow"], "Mode")
    debug: bool = base.checkbox_field(False, "Debug", hide=True)
    scale: float = base.range_field(0.8, 0.0, 1.0, 0.05, "Scale")
    size: int = base.size_field(512, "Size", ge=512, le=768)
    seed: int = base.seed_field(7, hide=True)
    text: str = base.prompt_field("", max_chars=10)


def test_helpers_enforce_and_describe():
    properties = Demo.model_json_schema()["properties"]
    assert properties["mode"]["field"] == "select" and properties["mode"]["values"] == ["fast", "slow"]
    assert properties["debug"].items() >= {"field": "checkbox", "hide": True, "id": "debug"}.items()
    assert properties["scale"].items() >= {"field": "range", "min": 0.0, "max": 1.0, "step": 0.05}.items()
    assert properties["size"].items() >= {"min": 512, "max": 768, "step": 8}.items()
    assert properties["seed"].items() >= {"field": "seed", "min": 0, "max": base.MAX_SEED, "hide": True}.items()
    assert properties["text"]["maxLength"] == 10
    for bad in ({"mode": "turbo"}, {"scale": 1.05}, {"size": 504}, {"size": 776}, {"size": 516},
                {"seed": -1}, {"text": "x" * 11}, {"other": 1}):
        with pytest.raises(ValidationError) as error:
            Demo(**bad)
        assert error_fields(error.value) == set(bad), bad
    assert Demo(mode="slow", size=768, text="x" * 10).mode == "slow"
