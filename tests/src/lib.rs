//! Integration, conformance and macro UI tests of the worker framework; see `tests/`.
