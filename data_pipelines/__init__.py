"""Converters from real federated data sources into the fedjaxscale dataset layout.

Each module is a command (``python -m data_pipelines.<name> --help``) and a library function;
see ``data_pipelines/README.md`` for where to get each source and the one command that converts it.
"""
