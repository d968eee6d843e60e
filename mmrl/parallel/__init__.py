"""Data-parallel training on top of `accelerate launch`. Read in this order: `distributed` (the process group and
its collectives), `engine` (the one interface, and why it syncs by hand), one file per strategy (`single`, `ddp`,
`fsdp2`, `zero`), `launch` (which one a launch asked for); `host_group` and `process_exit` (waiting for and ending
a launch's processes)."""
