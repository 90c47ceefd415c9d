"""The BentoML service: a thin shell over :mod:`router.policy` (see ``serving/service.py``)."""
