"""sd-webui-controlnet's "Control Type": which preprocessors and models a type offers, and what it picks."""
from __future__ import annotations

import pytest

from webui.core.controlnet import CONTROL_TYPES, control_type_choices
from webui.core.errors import InvalidField

MODULES = ["none", "canny", "invert", "threshold", "scribble_xdog", "lineart_standard", "tile_resample",
           "blur_gaussian", "shuffle", "inpaint", "inpaint_only", "openpose", "openpose_face", "openpose_full"]
MODELS = [("control_sd15_canny [aaaa0001]", "SD1.x"), ("control_v11p_sd15_canny [aaaa0002]", "SD1.x"),
          ("diffusers_xl_canny_full [aaaa0003]", "SDXL"), ("control_v11f1p_sd15_depth [aaaa0004]", "SD1.x"),
          ("control_v11p_sd15_openpose [aaaa0005]", "SD1.x"), ("t2i-adapter_xl_sketch [aaaa0006]", "SDXL"),
          ("control_v11e_sd15_ip2p [aaaa0007]", "SD1.x"), ("control_v11p_sd15_seg [aaaa0008]", "SD1.x")]


def test_all_offers_everything_and_picks_nothing():
    modules, models, module, model = control_type_choices("All", MODULES, MODELS, "SD1.x")
    assert modules == MODULES and models == ["None", *(t for t, _ in MODELS)]
    assert (module, model) == ("none", "None")


def test_canny_offers_its_preprocessors_the_inverter_and_the_loaded_kinds_models():
    modules, models, module, model = control_type_choices("Canny", MODULES, MODELS, "SD1.x")
    assert modules == ["none", "canny", "invert"]
    assert models == ["None", "control_sd15_canny [aaaa0001]", "control_v11p_sd15_canny [aaaa0002]"]
    assert module == "canny"
    assert model == "control_v11p_sd15_canny [aaaa0002]"     # a ControlNet 1.1 file is preferred
    # on an SDXL checkpoint the SDXL canny model is the one offered; unknown kind: all of them
    assert control_type_choices("Canny", MODULES, MODELS, "SDXL")[1] == ["None", "diffusers_xl_canny_full [aaaa0003]"]
    assert len(control_type_choices("Canny", MODULES, MODELS, None)[1]) == 4


def test_other_words_of_a_type():
    assert control_type_choices("Tile/Blur", MODULES, MODELS)[0] == ["none", "tile_resample", "blur_gaussian"]
    assert control_type_choices("Scribble/Sketch", MODULES, MODELS, "SDXL")[:2] == (
        ["none", "scribble_xdog", "invert"], ["None", "t2i-adapter_xl_sketch [aaaa0006]"])
    assert control_type_choices("InstructP2P", MODULES, MODELS)[1:] == (
        ["None", "control_v11e_sd15_ip2p [aaaa0007]"], "none", "control_v11e_sd15_ip2p [aaaa0007]")
    assert control_type_choices("Segmentation", MODULES, MODELS)[1] == ["None", "control_v11p_sd15_seg [aaaa0008]"]
    modules, _, module, _ = control_type_choices("OpenPose", MODULES, MODELS)
    assert modules == ["none", "openpose", "openpose_face", "openpose_full"] and module == "openpose_full"
    assert control_type_choices("Inpaint", MODULES, MODELS)[0] == ["none", "inpaint", "inpaint_only"]


def test_a_type_whose_default_cannot_run_here_falls_back_to_what_can():
    # Depth's own preprocessor (depth_midas) needs weights that are not here: "none" is picked, the model still is
    modules, models, module, model = control_type_choices("Depth", MODULES, MODELS, "SD1.x")
    assert modules == ["none"] and module == "none"
    assert model == "control_v11f1p_sd15_depth [aaaa0004]"
    assert control_type_choices("Reference", MODULES, MODELS)[1:] == (["None"], "none", "None")


def test_the_extensions_types_in_its_order_and_an_unknown_one_is_named():
    assert list(CONTROL_TYPES)[:5] == ["All", "Canny", "Depth", "NormalMap", "OpenPose"]
    with pytest.raises(InvalidField, match="unknown Control Type 'Colour'.*Canny"):
        control_type_choices("Colour", MODULES, MODELS)
