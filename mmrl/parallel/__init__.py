"""Data-parallel training on top of `accelerate launch`: the process group, the DDP / FSDP2 / ZeRO-2 wrappers, how a
process of a launch ends."""
