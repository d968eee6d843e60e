"""Load and save VLM processors, also where torchvision is missing.

transformers 5 gives every Qwen2-VL-family processor a video processor, and video processors need torchvision; there
is no CPU build of torchvision on some machines (ours among them). Images never need it, so when `AutoProcessor`
fails for that reason we assemble the same processor class from its tokenizer and image processor, with no video
processor. Where torchvision is installed, plain `AutoProcessor.from_pretrained` is used unchanged.

Up to transformers 5.17 `AutoImageProcessor` itself is a placeholder that raises when torchvision is missing (5.18+
picks the PIL backend on its own); the image processor is then the PIL class named after the configured one
(`Qwen2VLImageProcessor` -> `Qwen2VLImageProcessorPil`), which is what 5.18+ would choose. A model whose image
processor has no PIL class is refused in one line naming what to install.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from mmrl.errors import UserError

VIDEO_CONFIG = "video_preprocessor_config.json"


@contextlib.contextmanager
def _allow_missing_video_processor():
    from transformers import processing_utils

    original = processing_utils.ProcessorMixin.check_argument_for_proper_class

    def check(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return original(self, argument_name, argument)

    processing_utils.ProcessorMixin.check_argument_for_proper_class = check
    try:
        yield
    finally:
        processing_utils.ProcessorMixin.check_argument_for_proper_class = original


def _processor_class_name(path: str, **kwargs: Any) -> str | None:
    local = Path(path)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = local / name
        if file.is_file():
            value = json.loads(file.read_text()).get("processor_class")
            if value:
                return value
    return None


def load_processor(path: str, trust_remote_code: bool = False, **kwargs: Any):
    """`AutoProcessor.from_pretrained(path)`, falling back to an image-only processor when torchvision is missing."""
    import transformers
    from transformers import AutoProcessor, AutoTokenizer

    if Path(path).is_dir():
        folder_chat_template(path)  # two different templates in the folder are refused before either is used
    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (ImportError, AttributeError, ValueError) as err:
        if not _needs_torchvision(err) and "_extra_content" not in str(err):
            raise
    class_name = _processor_class_name(path) or "Qwen2_5_VLProcessor"
    processor_class = getattr(transformers, class_name)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    image_processor = load_image_processor(path, trust_remote_code=trust_remote_code, **kwargs)
    template = folder_chat_template(path) or tokenizer.chat_template
    tokenizer.chat_template = template  # one template for both: code that asks the tokenizer gets the processor's
    with _allow_missing_video_processor():
        return processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                               chat_template=template)


def folder_chat_template(path: str) -> str | None:
    """The folder's own chat template: `chat_template.jinja`, else `chat_template.json` (both: refused if different).

    It wins over the one embedded in `tokenizer_config.json`, which a model folder may ship stale or different
    (Qwen2-VL-2B's tokenizer_config holds the base model's template; a Thinking model's template may be published
    as chat_template.json only): using the tokenizer's silently renders every prompt in the wrong format.
    """
    local = Path(path)
    raw = (local / "chat_template.jinja").read_text() if (local / "chat_template.jinja").is_file() else None
    legacy = None
    if (local / "chat_template.json").is_file():
        try:
            legacy = json.loads((local / "chat_template.json").read_text()).get("chat_template")
        except (ValueError, AttributeError) as err:
            raise UserError(f"{local / 'chat_template.json'}: not a JSON object with a chat_template ({err})") from None
    if raw is not None and legacy is not None and raw.strip() != str(legacy).strip():
        # transformers 5 gives the processor chat_template.json and the tokenizer chat_template.jinja (4.x preferred
        # the .jinja for both): prompts, SFT labels and the thinking probe would each render a different template.
        raise UserError(f"{path}: chat_template.jinja and chat_template.json hold different chat templates (the "
                        "processor and the tokenizer would render different prompts); delete the one that is not "
                        "the model's")
    return raw if raw is not None else legacy


def load_image_processor(path: str, trust_remote_code: bool = False, **kwargs: Any):
    """`AutoImageProcessor.from_pretrained(path)`; where that class needs torchvision (transformers <= 5.17 without
    it), the PIL-backend class of the configured image processor, else a one-line `UserError`."""
    import transformers

    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (ImportError, ValueError) as err:
        if not _needs_torchvision(err):
            raise
    configured = _image_processor_type(path)
    base = configured.removesuffix("Fast").removesuffix("Pil") if configured else None
    pil_class = getattr(transformers, f"{base}Pil", None) if base else None
    if pil_class is None or type(pil_class).__name__ == "DummyObject":  # no PIL backend for it in this release
        raise UserError(f"{path}: its image processor ({configured or 'unknown type'}) needs torchvision, which is "
                        f"not installed: pip install {torchvision_requirement()}")
    return pil_class.from_pretrained(path, **kwargs)


def _needs_torchvision(err: Exception) -> bool:
    """transformers' way of saying a class needs torchvision: an ImportError (a placeholder class, up to 5.17) or the
    ValueError of the image-processor resolution; both name torchvision."""
    return "torchvision" in str(err).lower()


def torchvision_requirement() -> str:
    """The torchvision release built for the installed torch (torch 2.N pairs with torchvision 0.(N+15))."""
    import torch

    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return f"'torchvision=={major - 2}.{minor + 15}.*' (the build for torch {torch.__version__.split('+')[0]})"


def _image_processor_type(path: str) -> str | None:
    file = Path(path) / "preprocessor_config.json"
    return json.loads(file.read_text()).get("image_processor_type") if file.is_file() else None


def save_processor(processor, out_dir: str | os.PathLike, video_config: dict | None = None) -> None:
    """Save tokenizer, image processor, chat template and processor class so `AutoProcessor` can load them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    if getattr(processor, "video_processor", None) is not None:
        processor.video_processor.save_pretrained(out)
    elif video_config is not None:
        # Lets `AutoProcessor` build the video processor on machines that have torchvision.
        (out / VIDEO_CONFIG).write_text(json.dumps(video_config, indent=2))
    # Processor-level settings (e.g. Gemma3's image_seq_length) travel with it; sub-processors have their own files.
    settings = {k: v for k, v in processor.to_dict().items()
                if k not in ("image_processor", "video_processor", "tokenizer", "chat_template", "audio_processor")
                and isinstance(v, (int, float, str, bool))}
    settings["processor_class"] = type(processor).__name__
    (out / "processor_config.json").write_text(json.dumps(settings, indent=2))
    if processor.chat_template:
        (out / "chat_template.jinja").write_text(processor.chat_template)
