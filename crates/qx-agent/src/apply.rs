//! apply (being written)
