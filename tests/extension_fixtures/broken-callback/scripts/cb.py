from webui.extensions.api import on_cfg_denoiser


@on_cfg_denoiser
def explode(params):
    raise ValueError(f"boom in cfg_denoiser at step {params.sampling_step}")
