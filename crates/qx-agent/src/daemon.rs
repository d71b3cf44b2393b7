//! daemon (being written)
