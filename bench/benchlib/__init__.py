"""Helpers the bench scripts share (memory sampling, peers' loaders, the SynthSAEBench world, trainers and
diagnosis). Not entry points: every runnable bench is a `bench/<name>.py` with its own `main()`.

The scripts run as `python bench/<name>.py`, which puts `bench/` on `sys.path`, so they import `benchlib.<module>`."""
