//! extract (being written)
