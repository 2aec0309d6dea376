"""Hook points of one job of the sampling loop. The engine calls them; the Script API (webui/extensions)
subclasses JobHooks to run scripts' process_batch / postprocess_image and to hand in per-image prompts and
seeds. The default does nothing, so a plain job behaves as if there were no hooks."""
from __future__ import annotations

from typing import Any


class JobHooks:
    def begin(self, res: Any) -> None:
        """After the per-image lists are made (res.prompts, res.negative_prompts, res.seeds, res.subseeds):
        they may be replaced in place, keeping their length (batch_size x n_iter)."""

    def before_batch(self, n: int, res: Any, sl: slice) -> None:
        """Before batch ``n`` (images ``sl`` of the job) is sampled."""

    def postprocess_image(self, i: int, image: Any) -> Any:
        """Image ``i`` of the job after decoding, before its infotext is written and it is saved."""
        return image

    def extra_params(self) -> dict[str, Any]:
        """More "Key: value" pairs for the infotext (A1111's p.extra_generation_params)."""
        return {}
