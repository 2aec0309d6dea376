from webui.extensions.api import AlwaysVisible, Script


class BrokenHook(Script):
    def title(self):
        return "Broken hook"

    def show(self, is_img2img):
        return AlwaysVisible

    def process(self, p):
        raise RuntimeError("boom in process")
