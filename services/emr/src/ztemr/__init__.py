"""EMR simulator (issue 19): a clinical application that launches imaging viewers with tokens
narrowed to one study (docs/viewer.md, "Launch from the EMR")."""
