//! download (being written)
