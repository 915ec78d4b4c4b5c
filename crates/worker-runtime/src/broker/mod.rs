//! Broker backends.
