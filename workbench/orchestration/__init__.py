"""The orchestration layer: specs, runs, sweeps, reports and the ``split-workbench`` command.

It sits on top of the core (``split_workbench``) and the plugins (``split_workbench.attacks``,
``split_workbench.defenses``); nothing below imports it.
"""
