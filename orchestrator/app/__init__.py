"""Composition: what the commands run, built from the layers below. The results table
(``report``)."""
