"""One wording for validation errors (shared/validation.py): messages, the reader's sources file, api requests."""

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.reader.settings import load_sources_file
from shared.contracts import ContractError, FrameRef
from shared.validation import describe_errors


class Box(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x1: float = Field(ge=0)
    x2: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Box":
        if self.x2 < self.x1:
            raise ValueError("x2 must not be left of x1")
        return self


class Shape(BaseModel):
    box: Box
    name: str


def errors_of(model: type[BaseModel], data: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return caught.value


def test_each_error_names_its_field_by_dotted_path() -> None:
    exc = errors_of(Shape, {"box": {"x1": -1, "x2": 0}})
    assert describe_errors(exc) == "box.x1: Input should be greater than or equal to 0; name: Field required"


def test_a_whole_model_check_reads_as_its_own_text() -> None:
    # No "Value error, " prefix and no empty path: the validator's sentence names the fields itself.
    assert describe_errors(errors_of(Box, {"x1": 2, "x2": 1})) == "x2 must not be left of x1"


def test_a_limit_counts_what_it_leaves_out() -> None:
    exc = errors_of(Shape, {"box": {"x1": -1, "x2": -1, "y": 0}})
    text = describe_errors(exc, limit=2)
    assert text.startswith("box.x1: ") and text.count(";") == 1 and text.endswith(" (+2 more)")


def test_the_values_given_are_never_repeated() -> None:
    # Settings and messages may hold secrets or megabytes: only field names and rules are shown.
    exc = errors_of(Shape, {"box": {"x1": "hunter2", "x2": 0}, "name": "n"})
    assert "hunter2" not in describe_errors(exc)


def test_a_bad_message_says_which_fields() -> None:
    with pytest.raises(ContractError, match=r"FrameRef: 2 invalid field\(s\): seq: .*; width: "):
        FrameRef.from_bytes(b'{"source_id":"cam0","seq":-1,"pts":0,"wall_time":0,"url":"u","width":0,"height":1}')


def test_a_bad_sources_file_names_the_source_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  - {source_id: cam0, url: a.mp4}\n  - {source_id: cam1, jpeg_quality: 5}\n")
    with pytest.raises(ValueError, match=r"source 2: url: Field required; jpeg_quality: Input should be greater") as caught:
        load_sources_file(path)
    assert str(path) in str(caught.value)
