"""Log-probs of multi-turn episodes whose completions hold images (the environment's observations).

An episode group's prompt dict carries `EPISODE_KEY`: one entry per completion row with the pixel values, image grid
and token types of the images inside that row's completion. The shared-prefix forward cannot carry images inside a
completion (it continues the prompt's cache with text positions), so such a group takes the naive route: each episode
runs as one full sequence (prompt + completion, every image included), so its M-RoPE positions and token types are
exactly what the model computes for the whole conversation. Rows are [G, T] like every other forward's; a group
whose completions hold no image runs the ordinary shared-prefix forward.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mmrl.models.lm_head import DEFAULT_CHUNK, head_logprobs
from mmrl.models.placement import compute_autocast, to_model_device
from mmrl.models.prefix import reset_rope_deltas, strip_padding, unwrap

EPISODE_KEY = "episode_rows"
log = logging.getLogger(__name__)
_noted: set[str] = set()


def has_episode_images(prompt: dict[str, Any]) -> bool:
    rows = prompt.get(EPISODE_KEY)
    return bool(rows) and any(row.get("pixel_values") is not None for row in rows)


def without_episode_rows(prompt: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in prompt.items() if k != EPISODE_KEY}


def episode_logprobs(
    model: Any,
    prompt: dict[str, Any],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """[G, T] float32 log-probs (0 where the mask is 0) of G episode completions, one full-sequence forward each."""
    if "naive" not in _noted:
        _noted.add("naive")
        log.info(
            "multi-turn episodes with images after the prompt: full-sequence forward per episode "
            "(the shared-prefix forward cannot carry images inside a completion)"
        )
    rows = prompt[EPISODE_KEY]
    base = strip_padding(without_episode_rows(prompt))
    base, completion_ids, completion_mask, rows = to_model_device((base, completion_ids, completion_mask, rows), model)
    inner = unwrap(model)
    width = completion_ids.shape[1]
    plen = base["input_ids"].shape[1]
    out = []
    with compute_autocast(model):
        for r, row in enumerate(rows):
            length = min(int(row["length"]), width)
            scores = torch.zeros(width, dtype=torch.float32, device=completion_ids.device)
            active = completion_mask[r, :length].bool()
            if length == 0 or not bool(active.any()):
                out.append(scores)
                continue
            ids = completion_ids[r, :length]
            batch: dict[str, Any] = {"input_ids": torch.cat([base["input_ids"][0], ids])[None]}
            batch["attention_mask"] = torch.ones_like(batch["input_ids"])
            for key in ("mm_token_type_ids", "token_type_ids"):
                if base.get(key) is not None:
                    batch[key] = torch.cat([base[key][0], row["type_ids"][:length].to(base[key].dtype)])[None]
            pixels = [t for t in (base.get("pixel_values"), row.get("pixel_values")) if t is not None]
            grids = [t for t in (base.get("image_grid_thw"), row.get("image_grid_thw")) if t is not None]
            if pixels:
                batch["pixel_values"], batch["image_grid_thw"] = torch.cat(pixels), torch.cat(grids)
            reset_rope_deltas(model)
            hidden = inner.model(**batch).last_hidden_state[0, plen - 1 : plen + length - 1]
            reset_rope_deltas(model)
            picked = head_logprobs(
                inner.lm_head, hidden[active], ids[active], temperature=temperature, chunk_size=chunk_size
            )
            scores = scores.clone()
            scores[:length] = torch.zeros(length, dtype=torch.float32, device=scores.device).masked_scatter(
                active, picked
            )
            out.append(scores)
    return torch.stack(out)
