"""The unit tier: no network, no services, no dataset outside the repository.

The bundled datasets it uses (``cancer``, ``digits``) are fixtures of ``tests/conftest.py``.
"""
