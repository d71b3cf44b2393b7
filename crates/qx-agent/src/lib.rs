//! qx-agent
