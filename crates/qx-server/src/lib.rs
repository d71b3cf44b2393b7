//! qx-server
