"""Native launcher for the DICOMweb zero-trust demo (docs/stack.md).

`python -m ztstack up|down|status|logs --run-dir DIR`: creates the deployment CA and
certificates, renders every config into the run directory, starts Orthanc, the local IdP, the
gateway and its plain-HTTP redirector, seeds the demo data and writes `<run>/stack.json`.
"""
