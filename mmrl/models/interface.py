"""A model's interface traits, decided in one place from its own files: the coordinate frame it answers boxes and
points in, and whether its chat template's generation prompt already opens the reasoning block.

Frame (`pred_frame`): read from `config.json`'s `model_type` (the architecture, whatever the repository is called):

- `qwen2_vl`: `norm1000` (Qwen2-VL writes `(x1,y1),(x2,y2)` on a 0..1000 grid of the image);
- `qwen2_5_vl`: `input_pixel` (absolute pixels of the resized image the vision tower saw);
- `qwen3_vl`, `qwen3_vl_moe`: `norm1000` (Qwen3-VL went back to a 0..1000 grid);
- anything else (Gemma 3, SmolVLM/Idefics3, LLaVA...): unknown. These families publish no box or point output
  format, so mmrl does not guess: a run that scores coordinates with such a model stops with one line asking for
  `model.pred_frame` (or a reward's `pred_frame`), and nothing is read in a made-up frame.

An explicit frame (`model.pred_frame`, or a reward's `pred_frame` kwarg, which wins over both) overrides the default.

Reasoning block (`turn_prefix`, `think`): the chat template is rendered with and without the generation prompt for a
probe conversation; what the generation prompt adds after the prompt is the opening of the assistant's turn. When that
holds a `<think>` tag (Qwen3-VL-Thinking and QwQ open one: `<|im_start|>assistant\\n<think>\\n`; Qwen3 with
`enable_thinking=False` writes a closed empty one), the text from that tag on is already the model's turn: the
completion continues it. Rewards must score the whole turn, `turn_prefix + completion` (else `format` and every
strict-format reward see `</think>` without `<think>` and pay 0 for everything), and SFT must not teach the model to
write the opened tag again. Templates whose generation prompt holds no think tag (Qwen2/2.5/3-VL Instruct, Qwen3 by
default, Gemma 3, SmolVLM) have `turn_prefix == ""` and are handled as before.

>>> frame_of_config({"model_type": "qwen3_vl"})
('norm1000', "model_type 'qwen3_vl'")
>>> ModelInterface("qwen3_vl", "norm1000", "model_type 'qwen3_vl'", "<think>\\n", "open").whole_turn("r</think>")
'<think>\\nr</think>'
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmrl.errors import DataError, UserError

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
FRAMES = ("pixel", "input_pixel", "norm1000", "norm1")
# The frame each architecture answers boxes and points in (see the module docstring for the sources of each).
FRAME_BY_MODEL_TYPE: dict[str, str] = {
    "qwen2_vl": "norm1000",
    "qwen2_5_vl": "input_pixel",
    "qwen3_vl": "norm1000",
    "qwen3_vl_moe": "norm1000",
}
# Architectures whose configs lack `model_type` still name their class; the same families by class name.
MODEL_TYPE_BY_ARCHITECTURE = {
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
    "Qwen3VLMoeForConditionalGeneration": "qwen3_vl_moe",
}
# Rewards that read a predicted box or point (their `pred_frame` kwarg overrides the model's frame).
COORDINATE_REWARDS = ("iou", "giou", "iou_threshold", "multi_box_iou", "point_in_box", "gui_action")
# Rewards that read coordinates only for samples of these tasks (`accuracy` scores a grounding item by IoU).
COORDINATE_TASKS = ("grounding", "gui", "detection")
TASK_DISPATCHING_REWARDS = ("accuracy", "hard_format_accuracy", "curr_reft_open")
_PROBE = "mmrl-probe"


@dataclass(frozen=True)
class ModelInterface:
    """What mmrl must know of a model to read its answers: see the module docstring."""

    model_type: str | None
    pred_frame: str | None  # None: unknown (scoring coordinates is refused until one is given)
    frame_source: str  # why: "model_type 'qwen3_vl'", "model.pred_frame", or why it is unknown
    turn_prefix: str = ""  # the part of the assistant's turn the generation prompt already wrote
    think: str = "none"  # "open": the prompt leaves <think> open; "closed": it holds a closed block; "none"

    def whole_turn(self, completion: str) -> str:
        """The model's whole turn for a completion: what rewards, eval and users see."""
        return self.turn_prefix + completion

    def record(self) -> dict[str, Any]:
        """What a run directory and an eval report record of the interface used."""
        return asdict(self)

    def describe(self) -> str:
        """One line for a run's log: the frame and the reasoning-block handling in use."""
        frame = f"boxes/points read as {self.pred_frame} ({self.frame_source})" if self.pred_frame else \
            f"no box/point frame ({self.frame_source})"
        think = {"open": f"the generation prompt opens {self.turn_prefix!r}: rewards score it + the completion",
                 "closed": f"the generation prompt writes {self.turn_prefix!r}: rewards score it + the completion",
                 "none": "the generation prompt opens no reasoning block"}[self.think]
        return f"model interface: {frame}; {think}"

    def save(self, run_dir: str | Path) -> Path:
        """Record the interface a run used as `<run_dir>/model_interface.json`."""
        path = Path(run_dir) / "model_interface.json"
        path.write_text(json.dumps(self.record(), indent=2) + "\n", encoding="utf-8")
        return path

    def require_frame(self, what: str) -> str:
        """The frame, or one line saying how to give one."""
        if self.pred_frame is None:
            raise UserError(f"{what} reads predicted boxes/points, but {self.frame_source}; set model.pred_frame "
                            f"(one of {', '.join(FRAMES)}) to the frame the model answers in")
        return self.pred_frame


def frame_of_config(config: Any) -> tuple[str | None, str]:
    """(default frame, why) from a model config (a `config.json` dict or a transformers config)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    model_type = get("model_type")
    if not model_type:
        archs = get("architectures") or []
        model_type = next((MODEL_TYPE_BY_ARCHITECTURE[a] for a in archs if a in MODEL_TYPE_BY_ARCHITECTURE), None)
    if model_type in FRAME_BY_MODEL_TYPE:
        return FRAME_BY_MODEL_TYPE[model_type], f"model_type '{model_type}'"
    if model_type:
        return None, f"model_type '{model_type}' has no published box/point frame"
    return None, "the model's config names no model_type"


def _render(template_owner: Any, messages: list[dict[str, Any]], generation: bool, kwargs: dict[str, Any]) -> str:
    return template_owner.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False, **kwargs)


def _probe_renders(template_owner: Any, kwargs: dict[str, Any], system_prompt: str | None = None
                   ) -> tuple[str, str] | None:
    """(prompt with, without the generation prompt) for a one-turn probe; list content first (VLM templates), then
    plain text (text-only templates that call string methods on the content); then the same after a system message
    (templates that refuse a conversation without one). With the run's `system_prompt`, the probe carries it first:
    a template may open the reasoning block only under some system prompts ("detailed thinking on")."""
    shapes = ((False, [{"type": "text", "text": _PROBE}]), (False, _PROBE), (True, [{"type": "text", "text": _PROBE}]),
              (True, _PROBE))
    for system, content in shapes[2:] + shapes[:2] if system_prompt else shapes:
        messages = [{"role": "user", "content": content}]
        if system:
            text = system_prompt or _PROBE
            messages.insert(0, {"role": "system", "content": text if isinstance(content, str) else
                                [{"type": "text", "text": text}]})
        try:
            return _render(template_owner, messages, True, kwargs), _render(template_owner, messages, False, kwargs)
        except Exception:  # noqa: BLE001 - a template that rejects this content shape: try the other one
            continue
    return None


def _warn_other_block(template_owner: Any, opened: str) -> None:
    """One warning when the generation prompt ends by opening a tag other than <think> (`<reasoning>\n`): mmrl's
    rewards and SFT know the <think> block only, so that turn is read as the completion alone."""
    found = re.search(r"<([A-Za-z][\w-]*)>\s*$", opened)
    if found is None:
        return
    tokenizer = getattr(template_owner, "tokenizer", template_owner)
    special = set(getattr(tokenizer, "all_special_tokens", None) or ()) | set(
        getattr(tokenizer, "get_added_vocab", dict)() or ())
    if found.group(0).strip() in special or f"</{found.group(1)}>" in opened:
        return  # a role marker of the template (<start_of_turn>), not an opened block
    log.warning("the chat template's generation prompt opens %r, which mmrl does not read as a reasoning block (it "
                "knows <think> only): completions are scored, served and trained as they are, without it",
                found.group(0).strip())


def turn_prefix_of(template_owner: Any, template_kwargs: dict[str, Any] | None = None,
                   system_prompt: str | None = None) -> tuple[str, str]:
    """(turn_prefix, think) of a processor's or tokenizer's chat template (see the module docstring).

    Decided by rendering the real template: the generation prompt's text from its last `<think>` on, when it has one.
    A template that cannot be rendered, or whose generation prompt rewrites the prompt before it, gives ("", "none")
    with one warning: mmrl then scores completions as they are, as it always did."""
    if getattr(template_owner, "chat_template", None) is None and not hasattr(template_owner, "tokenizer"):
        return "", "none"
    renders = _probe_renders(template_owner, dict(template_kwargs or {}), system_prompt)
    if renders is None:
        log.warning("the chat template could not be rendered for a probe turn; completions are scored as they are")
        return "", "none"
    with_prompt, without = renders
    if not with_prompt.startswith(without):
        log.warning("the chat template's generation prompt rewrites the prompt before it; cannot tell whether it "
                    "opens a reasoning block; completions are scored as they are")
        return "", "none"
    opened = with_prompt[len(without):]
    start = opened.rfind(THINK_OPEN)
    if start < 0:
        _warn_other_block(template_owner, opened)
        return "", "none"
    prefix = opened[start:]
    return prefix, "closed" if THINK_CLOSE in prefix else "open"


def resolve_interface(config: Any, template_owner: Any = None, pred_frame: str | None = "auto",
                      template_kwargs: dict[str, Any] | None = None, system_prompt: str | None = None
                      ) -> ModelInterface:
    """The interface of a model: `config` (its config dict or object), `template_owner` (its processor or tokenizer;
    None: no template known, no prefix) and the user's `pred_frame` ('auto'/None: the model type's default)."""
    frame, source = frame_of_config(config)
    if pred_frame not in (None, "auto"):
        if pred_frame not in FRAMES:
            raise UserError(f"model.pred_frame: '{pred_frame}' is not a frame; use auto or one of {', '.join(FRAMES)}")
        frame, source = pred_frame, "model.pred_frame"
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    prefix, think = (turn_prefix_of(template_owner, template_kwargs, system_prompt) if template_owner is not None
                     else ("", "none"))
    return ModelInterface(get("model_type"), frame, source, prefix, think)


def interface_of(model: Any, processor: Any, pred_frame: str | None = "auto",
                 template_kwargs: dict[str, Any] | None = None, system_prompt: str | None = None) -> ModelInterface:
    """The interface of a loaded model (a peft wrapper or a DDP module is looked through for its config);
    `template_kwargs`: the run's `data.chat_template_kwargs`, as its prompts are rendered with them."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else getattr(model, "module", model)
    return resolve_interface(getattr(inner, "config", {}) or {}, processor, pred_frame, template_kwargs,
                             system_prompt)


def interface_of_backend(backend: Any, pred_frame: str | None = "auto") -> ModelInterface:
    """The interface of a generation backend's model; a remote backend (no local model) has an unknown frame and no
    prefix: its replies are read as whole turns (`mmrl serve` sends them; a vLLM server's are made whole by
    `reply_turn` in the HTTP backend)."""
    model, processor = getattr(backend, "model", None), getattr(backend, "processor", None)
    if model is None or processor is None:
        return resolve_interface({}, None, pred_frame)
    data_cfg = getattr(backend, "data_cfg", None)
    template_kwargs = getattr(data_cfg, "chat_template_kwargs", None)
    system = getattr(data_cfg, "system_prompt", None)
    return interface_of(model, processor, pred_frame, template_kwargs if isinstance(template_kwargs, dict) else None,
                        system if isinstance(system, str) else None)


def interface_of_dir(path: str | Path, pred_frame: str | None = "auto",
                     template_kwargs: dict[str, Any] | None = None) -> ModelInterface:
    """The interface of a model folder: its `config.json` and its tokenizer's chat template (no weights loaded)."""
    from transformers import AutoTokenizer

    folder = Path(path)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return resolve_interface(config, tokenizer, pred_frame, template_kwargs)


def reply_turn(content: str, reasoning: str | None = None, truncated: bool = False) -> str:
    """The model's whole turn from an OpenAI-compatible server's reply (`mmrl serve` sends whole turns already).

    A server with a reasoning parser (vLLM's `--reasoning-parser`) returns the reasoning apart (`reasoning_content`
    or `reasoning`) and the rest as `content`: the turn is `<think>\\n{reasoning}\\n</think>\\n\\n{content}`. A server
    without one, for a template that opens `<think>` in the prompt, returns `reasoning</think>...`: the turn starts
    with the `<think>` its prompt opened. Anything else is the turn as it is.

    >>> reply_turn("r</think><answer>4</answer>")
    '<think>\\nr</think><answer>4</answer>'
    """
    if reasoning and reasoning.strip():
        if truncated and not content.strip():  # cut off inside its reasoning: the block was never closed
            return f"{THINK_OPEN}\n{reasoning.lstrip()}"
        return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{content.lstrip()}"
    if THINK_CLOSE in content and THINK_OPEN not in content.split(THINK_CLOSE, 1)[0]:
        return f"{THINK_OPEN}\n{content}"
    return content


def reads_coordinates(reward_specs: Any, tasks: Any) -> str | None:
    """The first reward (by name) that would read a predicted box or point in the model's frame, or None.

    A coordinate reward with its own `pred_frame` kwarg does not need the model's; `accuracy`-style rewards read
    coordinates only for grounding/GUI samples, so they count only when such a task is in `tasks`."""
    task_set = set(tasks or ())
    for spec in reward_specs or ():
        name = spec.name if hasattr(spec, "name") else spec.get("name")
        kwargs = (spec.kwargs if hasattr(spec, "kwargs") else spec.get("kwargs")) or {}
        if name in COORDINATE_REWARDS and not kwargs.get("pred_frame"):
            return f"reward '{name}'"
        if name in TASK_DISPATCHING_REWARDS and task_set & set(COORDINATE_TASKS):
            return f"reward '{name}' on {'/'.join(sorted(task_set & set(COORDINATE_TASKS)))} samples"
    return None


def eval_coordinate_tasks(tasks: Any, reward_for_task: dict[str, str] | None = None) -> list[str]:
    """The tasks among `tasks` whose eval scoring reads predicted boxes/points: grounding/GUI/detection, and any task
    that `eval.reward_for_task` routes to a coordinate reward."""
    routed = {task for task, reward in (reward_for_task or {}).items() if reward in COORDINATE_REWARDS}
    return sorted(set(tasks) & (set(COORDINATE_TASKS) | routed))


def sft_continuation(response: str, turn_prefix: str, sample_id: str) -> str:
    """What the model must generate after a prompt that ends with `turn_prefix`, for a record whose `response` is the
    whole turn (`<think>…</think><answer>…</answer>`): the response without the part the prompt already wrote (its
    tags matched with any whitespace around them), so the opened tag is trained once, never twice.

    >>> sft_continuation("<think> r </think><answer>4</answer>", "<think>\\n", "s1")
    'r </think><answer>4</answer>'
    """
    if not turn_prefix:
        return response
    pattern = r"\s*" + r"\s*".join(re.escape(part) for part in turn_prefix.split()) + r"\s*"
    match = re.match(pattern, response)
    if match is None:
        example = ("<think></think><answer>…</answer>: the template closed the reasoning block, so there is no "
                   "reasoning to train; drop data.chat_template_kwargs' enable_thinking=false to train it"
                   if THINK_CLOSE in turn_prefix else "<think>…</think><answer>…</answer>")
        raise DataError(f"sample {sample_id}: the chat template's generation prompt already writes {turn_prefix!r}, so "
                        f"the response must be the model's whole turn starting with it (e.g. {example}); it starts "
                        f"with {response[:24]!r}")
    rest = response[match.end():]
    if THINK_OPEN in rest:
        raise DataError(f"sample {sample_id}: the response opens {THINK_OPEN} twice; a turn has one reasoning block")
    return rest


__all__ = [
    "COORDINATE_REWARDS", "FRAMES", "FRAME_BY_MODEL_TYPE", "ModelInterface", "THINK_CLOSE", "THINK_OPEN",
    "eval_coordinate_tasks",
    "frame_of_config", "interface_of", "interface_of_backend", "interface_of_dir", "reads_coordinates",
    "reply_turn", "resolve_interface", "sft_continuation", "turn_prefix_of",
]  # fmt: skip
