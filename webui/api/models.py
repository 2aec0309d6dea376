"""Pydantic models for the API, built from the core request type (one truth for the schema)."""
from __future__ import annotations

import dataclasses
import typing

from pydantic import ConfigDict, Field, create_model

from webui.core.extras import ExtrasBatchImages, ExtrasSingleImage
from webui.core.request import GenerationRequest, Img2ImgRequest
from webui.core.training import (
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
)


def _fields_of(cls) -> dict:
    """Every field optional and nullable, as in A1111's generated models: null means the field's default."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = (hints[f.name] | None, Field(default_factory=f.default_factory))
        else:
            out[f.name] = (hints[f.name] | None, f.default)
    return out


Txt2ImgRequest = create_model("StableDiffusionProcessingTxt2Img", __config__=ConfigDict(extra="ignore"),
                              **_fields_of(GenerationRequest))


Img2ImgApiRequest = create_model("StableDiffusionProcessingImg2Img", __config__=ConfigDict(extra="ignore"),
                                 **_fields_of(Img2ImgRequest))


ExtrasSingleImageApiRequest = create_model("ExtrasSingleImageRequest", __config__=ConfigDict(extra="ignore"),
                                          **_fields_of(ExtrasSingleImage))


ExtrasBatchImagesApiRequest = create_model("ExtrasBatchImagesRequest", __config__=ConfigDict(extra="ignore"),
                                          **_fields_of(ExtrasBatchImages))


CreateEmbeddingApiRequest = create_model("CreateEmbeddingRequest", __config__=ConfigDict(extra="ignore"),
                                        **_fields_of(CreateEmbeddingRequest))


TrainEmbeddingApiRequest = create_model("TrainEmbeddingRequest", __config__=ConfigDict(extra="ignore"),
                                       **_fields_of(TrainEmbeddingRequest))


CreateHypernetworkApiRequest = create_model("CreateHypernetworkRequest", __config__=ConfigDict(extra="ignore"),
                                           **_fields_of(CreateHypernetworkRequest))


TrainHypernetworkApiRequest = create_model("TrainHypernetworkRequest", __config__=ConfigDict(extra="ignore"),
                                          **_fields_of(TrainHypernetworkRequest))


def to_request(body, cls=GenerationRequest):
    """The core request from a validated API body (a field that came as null gets its default)."""
    data = {}
    for f in dataclasses.fields(cls):
        value = getattr(body, f.name)
        if value is None:
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                value = f.default_factory()  # type: ignore[misc]
            elif f.default is not dataclasses.MISSING:
                value = f.default
        data[f.name] = value
    return cls(**data)
