//! qx-testkit
