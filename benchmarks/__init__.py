"""The pyops benchmark suite: every op against torch's built-ins on this machine.

Run it with `python -m benchmarks` (see --help) or the README's command.
"""
