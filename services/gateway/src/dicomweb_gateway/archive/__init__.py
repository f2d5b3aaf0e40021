"""Archive adapters: one module per archive product (Orthanc now, dcm4chee later)."""
