//! qx-publish
