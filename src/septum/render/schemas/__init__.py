"""JSON Schemas (Draft 2020-12) of the CRD kinds Septum renders, one file per kind:
``<kind>.<group>.<version>.json``. Package data, read by :mod:`septum.render.validate`, whose
docstring says which published CRD each was written from."""
